#!/usr/bin/env bash
# The real tools the chart and integration tests run, built once from their
# Go modules into $VIGIL_CACHE/bin, keyed by version:
#
#   tools.sh build [helm]   build what is missing
#   tools.sh path helm      print the binary's path
#
# Helm v4 from helm.sh/helm/v4 (Apache-2.0), pinned in tools/helm/go.mod.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELM_VERSION="v4.3.1"
HELM="$VIGIL_CACHE/bin/helm-$HELM_VERSION"
export GOFLAGS="${GOFLAGS:--mod=mod}"

build_helm() {
  [[ -x $HELM ]] && return
  command -v go >/dev/null || die "go is needed to build helm"
  log "building helm $HELM_VERSION from helm.sh/helm/v4 (first time only)"
  (cd "$E2E_DIR/tools/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$HELM.tmp" helm.sh/helm/v4/cmd/helm) && mv "$HELM.tmp" "$HELM"
}

case "${1:-}" in
  build)
    case "${2:-all}" in
      helm|all) build_helm ;;
      *) die "unknown tool ${2}" ;;
    esac ;;
  path)
    case "${2:-}" in
      helm) echo "$HELM" ;;
      *) die "unknown tool ${2:-}" ;;
    esac ;;
  *) echo "usage: $0 build [helm]|path helm" >&2; exit 2 ;;
esac
