//go:build tools

// Package tools pins the Helm command the harness builds.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
