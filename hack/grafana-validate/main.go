// Command grafana-validate checks Grafana dashboard JSON files against Grafana's dashboard schema, using the
// types Grafana generates from it (github.com/grafana/grafana-foundation-sdk/go, Apache-2.0): a strict
// unmarshal (unknown fields, wrong types, unknown panel options and Prometheus query fields are errors, with
// every panel plugin and data source variant registered) followed by the schema's Validate constraints.
//
// Usage: grafana-validate FILE.json...   (exit 1 when any file fails; one line per file)
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// realError unwraps the SDK's error values: its generated methods return their cog.BuildErrors slice as an
// `error` even when it is empty (a non-nil interface holding a nil slice), which is success.
func realError(err error) error {
	var errs cog.BuildErrors
	if errors.As(err, &errs) && len(errs) == 0 {
		return nil
	}
	return err
}

func validate(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var d dashboard.Dashboard
	if err := realError(d.UnmarshalJSONStrict(raw)); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	if err := realError(d.Validate()); err != nil {
		return fmt.Errorf("constraints: %w", err)
	}
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grafana-validate FILE.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		if err := validate(path); err != nil {
			failed = true
			fmt.Printf("FAIL %s: %v\n", path, err)
			continue
		}
		fmt.Printf("OK %s\n", path)
	}
	if failed {
		os.Exit(1)
	}
}
