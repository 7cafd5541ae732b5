// dashlint decodes Grafana dashboard JSON strictly (unknown fields and
// missing required panel options are errors) and validates it, with
// github.com/grafana/grafana-foundation-sdk/go. No Grafana code.
//
//	dashlint FILE.json...   a dashboard, or a {"dashboard": {...}} envelope
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var envelope map[string]json.RawMessage
	if json.Unmarshal(raw, &envelope) == nil && envelope["dashboard"] != nil && envelope["panels"] == nil {
		raw = envelope["dashboard"]
	}
	var d dashboard.Dashboard
	err = d.UnmarshalJSONStrict(raw)
	// A successful strict decode returns an empty cog.BuildErrors.
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		err = nil
	}
	if err != nil {
		return err
	}
	return d.Validate()
}

func main() {
	plugins.RegisterDefaultPlugins()
	bad := 0
	for _, p := range os.Args[1:] {
		if err := check(p); err != nil {
			fmt.Printf("INVALID %s: %v\n", p, err)
			bad++
			continue
		}
		fmt.Printf("ok %s\n", p)
	}
	if bad > 0 {
		os.Exit(1)
	}
}
