# vpc-cni: `make demo` (the main job) and `make test` set up everything they need on a fresh machine.
.PHONY: demo test lint build bench image localstack-start localstack-stop

build:
	cargo build --workspace --bins

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# Pod start speed beside the reference plugins, ipamd throughput/memory/EC2 economy (docs/benchmarks.md).
bench:
	bash scripts/bench.sh $(ARGS)

# The DaemonSet image (deploy/Dockerfile) with podman, buildah or docker, whichever is installed. Its base images
# come from a registry, so this needs one reachable (the development machines here have none: CI validates the
# Dockerfile with hadolint in scripts/check-manifests.sh instead).
IMAGE ?= vpc-cni:dev
image:
	@tool=$$(command -v podman || command -v buildah || command -v docker) || { echo "make image: needs podman, buildah or docker" >&2; exit 1; }; \
	case "$$tool" in *buildah) set -x; "$$tool" bud -f deploy/Dockerfile -t $(IMAGE) . ;; *) set -x; "$$tool" build -f deploy/Dockerfile -t $(IMAGE) . ;; esac

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

localstack-start:
	bash scripts/localstack.sh start

localstack-stop:
	bash scripts/localstack.sh stop
