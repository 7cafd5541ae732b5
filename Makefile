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

# Regenerate crds/*.yaml from the Rust types.
crds:
	cargo run -q -p vigil-operator -- crd --out-dir crds
