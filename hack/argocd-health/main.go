// Command argocd-health evaluates kubemoe's Argo CD health checks with Argo CD's own code.
//
// For every <dir>/<group>/<Kind>/health_test.yaml under the resource_customizations directory it runs each
// test's fixture twice and compares both results with the test's healthStatus:
//
//   - builtin: the way argo-cd's util/lua TestLuaHealthScript runs a built-in check (VM{UseOpenLibs: true},
//     ExecuteHealthLua on the health.lua next to the test), so the layout is ready to upstream;
//   - argocd-cm: the way `argocd admin settings resource-overrides health --argocd-cm-path` does it (the
//     argocd-cm ConfigMap in a fake clientset, util/settings reads its resource.customizations.health.* keys,
//     gitops-engine's health.GetResourceHealth runs the override), so the shipped snippet is what is tested.
//
// It prints one JSON line per evaluation and exits 1 when any result differs from its expectation.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"

	"github.com/argoproj/argo-cd/gitops-engine/pkg/health"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

type testFile struct {
	Tests []struct {
		InputPath    string              `json:"inputPath"`
		HealthStatus health.HealthStatus `json:"healthStatus"`
	} `json:"tests"`
}

type result struct {
	Path     string               `json:"path"`
	Mode     string               `json:"mode"`
	Expected health.HealthStatus  `json:"expected"`
	Got      *health.HealthStatus `json:"got,omitempty"`
	Error    string               `json:"error,omitempty"`
	OK       bool                 `json:"ok"`
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(data, into)
}

// overridesFromConfigMap loads resource overrides exactly as the `argocd admin settings` commands do.
func overridesFromConfigMap(ctx context.Context, path string) (lua.ResourceHealthOverrides, error) {
	cm := &corev1.ConfigMap{}
	if err := readYAML(path, cm); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	cm.Namespace = "default"
	cm.Labels = map[string]string{"app.kubernetes.io/part-of": "argocd"}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: common.ArgoCDSecretName, Namespace: "default",
			Labels: map[string]string{"app.kubernetes.io/part-of": "argocd"},
		},
		Data: map[string][]byte{"admin.password": []byte("test"), "server.secretkey": []byte("test")},
	}
	mgr := settings.NewSettingsManager(ctx, fake.NewClientset(secret, cm), "default")
	if err := mgr.ResyncInformers(); err != nil {
		return nil, err
	}
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		return nil, err
	}
	return lua.ResourceHealthOverrides(overrides), nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health RESOURCE_CUSTOMIZATIONS_DIR ARGOCD_CM_YAML")
		os.Exit(2)
	}
	root, cmPath := os.Args[1], os.Args[2]
	ctx := context.Background()
	cmOverrides, err := overridesFromConfigMap(ctx, cmPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-cm:", err)
		os.Exit(2)
	}
	tests, err := filepath.Glob(filepath.Join(root, "*", "*", "health_test.yaml"))
	if err != nil || len(tests) == 0 {
		fmt.Fprintf(os.Stderr, "no */*/health_test.yaml under %s (%v)\n", root, err)
		os.Exit(2)
	}
	sort.Strings(tests)
	failed, count := false, 0
	out := json.NewEncoder(os.Stdout)
	for _, testPath := range tests {
		dir := filepath.Dir(testPath)
		var tf testFile
		if err := readYAML(testPath, &tf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for _, tc := range tf.Tests {
			input := filepath.Join(dir, tc.InputPath)
			obj := &unstructured.Unstructured{Object: map[string]any{}}
			if err := readYAML(input, &obj.Object); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			vm := lua.VM{UseOpenLibs: true}
			builtin, berr := vm.ExecuteHealthLua(obj, string(script))
			viaCM, cerr := health.GetResourceHealth(obj, cmOverrides)
			for _, r := range []struct {
				mode string
				got  *health.HealthStatus
				err  error
			}{{"builtin", builtin, berr}, {"argocd-cm", viaCM, cerr}} {
				res := result{Path: input, Mode: r.mode, Expected: tc.HealthStatus, Got: r.got}
				if r.err != nil {
					res.Error = r.err.Error()
				}
				res.OK = r.err == nil && r.got != nil && reflect.DeepEqual(*r.got, tc.HealthStatus)
				failed = failed || !res.OK
				count++
				_ = out.Encode(res)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "%d evaluations matched their health_test.yaml\n", count)
}
