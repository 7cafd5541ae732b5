# Entry points; the scripts they call say what they do.
.PHONY: test demo up down crds

# The whole test suite against real Kafka and a real kube-apiserver.
test:
	e2e/test

# Start / stop the test services by hand.
up:
	e2e/up
down:
	e2e/down

# Regenerate crds/*.yaml from the Rust types, and the chart's copies of the
# CRDs and of the operator's RBAC rules.
crds:
	cargo run -q -p vigil-operator -- crd --out-dir crds
	cargo run -q -p vigil-operator -- crd --out-dir helm/vigil/files/crds
	cargo run -q -p vigil-operator -- rbac --rules-only > helm/vigil/files/rbac-rules.yaml
