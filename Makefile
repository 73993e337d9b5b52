# vpc-cni: `make demo` (the main job) and `make test` set up everything they need on a fresh machine.
.PHONY: demo test lint build bench localstack-start localstack-stop

build:
	cargo build --workspace --bins

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

localstack-start:
	bash scripts/localstack.sh start

localstack-stop:
	bash scripts/localstack.sh stop
