// argo-health runs Argo CD health scripts with Argo CD's own Lua evaluator
// (github.com/argoproj/argo-cd/v3/util/lua), in the layout of Argo CD's
// resource_customizations: DIR/health.lua, DIR/health_test.yaml (tests:
// inputPath, healthStatus {status, message}), DIR/testdata/*.yaml.
//
//	argo-health DIR...     run every DIR's health_test.yaml; exit 1 on a mismatch
package main

import (
	"fmt"
	"os"
	"path/filepath"

	argolua "github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/gitops-engine/pkg/health"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

type testFile struct {
	Tests []struct {
		InputPath    string              `json:"inputPath"`
		HealthStatus health.HealthStatus `json:"healthStatus"`
	} `json:"tests"`
}

func read(path string, into any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, into)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: argo-health DIR...")
		os.Exit(2)
	}
	// Argo CD runs scripts from argocd-cm with only its safe libraries
	// unless useOpenLibs is set, and its built-in ones with all of them:
	// every test runs both ways.
	failed, ran := 0, 0
	for _, openLibs := range []bool{false, true} {
		vm := argolua.VM{UseOpenLibs: openLibs}
		for _, dir := range os.Args[1:] {
			script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			var tf testFile
			if err := read(filepath.Join(dir, "health_test.yaml"), &tf); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			for _, tc := range tf.Tests {
				ran++
				obj := map[string]any{}
				if err := read(filepath.Join(dir, tc.InputPath), &obj); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				got, err := vm.ExecuteHealthLua(&unstructured.Unstructured{Object: obj}, string(script))
				switch {
				case err != nil:
					fmt.Printf("FAIL %s %s: %v\n", dir, tc.InputPath, err)
					failed++
				case got.Status != tc.HealthStatus.Status || got.Message != tc.HealthStatus.Message:
					fmt.Printf("FAIL %s %s: want %s %q, got %s %q\n", dir, tc.InputPath,
						tc.HealthStatus.Status, tc.HealthStatus.Message, got.Status, got.Message)
					failed++
				default:
					fmt.Printf("ok   %s %s (openLibs=%v): %s %q\n", dir, tc.InputPath, openLibs, got.Status, got.Message)
				}
			}
		}
	}
	fmt.Printf("%d passed, %d failed\n", ran-failed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
