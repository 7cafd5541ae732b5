# Entry points; the scripts they call say what they do.
.PHONY: test demo up down crds images node

# The whole test suite against real Kafka and a real kube-apiserver.
test:
	e2e/test

# Start / stop the test services by hand; `make node` adds a real node
# running Vigil's images (root).
up:
	e2e/up
node:
	e2e/images
	e2e/up --node
down:
	e2e/down

# Regenerate crds/*.yaml from the Rust types, and the chart's copies of the
# CRDs and of the operator's RBAC rules.
crds:
	cargo run -q -p vigil-operator -- crd --out-dir crds
	cargo run -q -p vigil-operator -- crd --out-dir helm/vigil/files/crds
	cargo run -q -p vigil-operator -- rbac --rules-only > helm/vigil/files/rbac-rules.yaml
	cargo run -q -p vigil-operator -- rbac --rules-only --namespaced > helm/vigil/files/rbac-namespace-rules.yaml

# OCI image archives of the operator and runner (release build), no Docker.
images:
	e2e/images --release
