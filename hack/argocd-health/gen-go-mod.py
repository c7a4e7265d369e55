"""Write the first go.mod of the wrapper module (then `go mod tidy` completes it; both are committed).

It holds argo-cd's requirement plus every replace line of its release go.mod.

A depending module ignores its dependency's replace lines, so they are copied here (the way hack/toolchain pins
Kubernetes' staging modules). The one that points into argo-cd's own tree (./gitops-engine) cannot be copied:
it is pinned to a gitops-engine pseudo-version the module proxy serves (argv[3]). argo-cd v3.5.7 requires
gitops-engine v0.7.1-0.20250908182407-97ad5b59a627, which the proxy refuses ("403 This module version is not
available"); `@latest` gives v0.0.0-20260914071520-c9c369efcc5b, used here. argo-cd v3.6.x moved to
gitops-engine/v3, whose versions all fail to resolve here, so v3.5.7 is the newest argo-cd this can build.
Usage: gen-go-mod.py ARGO_CD_VERSION ARGO_CD_GO_MOD GITOPS_ENGINE_VERSION > go.mod
"""

import re
import sys

version, gomod_path, engine = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(gomod_path).read()
lines = []
for block in re.findall(r"^replace \((.*?)^\)", text, re.M | re.S):
    lines += [ln.strip() for ln in block.splitlines()]
lines += re.findall(r"^replace ([^(].*)$", text, re.M)
replaces = [ln for ln in lines if "=>" in ln and not ln.startswith("//") and "=> ./" not in ln]
go = re.search(r"^go (\S+)", text, re.M).group(1)
print("module kubemoe.local/argocdhealth\n")
print(f"go {go}\n")
print(f"require github.com/argoproj/argo-cd/v3 {version}\n")
# Argo CD's own multi-call binary, built from this module too (hack/tools-observability install argocd).
print("tool github.com/argoproj/argo-cd/v3/cmd\n")
print("replace (")
print(f"\tgithub.com/argoproj/argo-cd/gitops-engine => github.com/argoproj/argo-cd/gitops-engine {engine}")
for ln in replaces:
    print(f"\t{ln}")
print(")")
