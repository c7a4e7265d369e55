// Package ext is kubemoe's stand-in for Traefik's nested module github.com/traefik/traefik/dynamic/ext.
//
// Traefik's own go.mod replaces that module with ./pkg/config/dynamic/ext, a directory that the module
// zip on the Go module proxy leaves out (a nested module is never part of its parent's zip), and the
// proxy serves no version of it. In the open-source build it only holds empty extension points that
// pkg/config/dynamic embeds inline; these declarations are the same empty types, so the build is the
// plain open-source Traefik.
package ext

// HTTP is the (empty) dynamic.HTTP extension point.
type HTTP struct{}

// Router is the (empty) dynamic.Router extension point.
type Router struct{}

// RouterIng is the (empty) extension point for ingress provider annotations.
type RouterIng struct{}

// ToRouter converts RouterIng to a Router.
func (r RouterIng) ToRouter() Router { return Router{} }
