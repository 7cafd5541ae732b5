// Strict validation of Grafana dashboards with grafana-foundation-sdk
// (Apache-2.0; no Grafana code).
module vigil.dev/e2e/tools/dashlint

go 1.26

require github.com/grafana/grafana-foundation-sdk/go v0.0.22
