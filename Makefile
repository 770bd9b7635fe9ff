# One-command set-up: `make demo` and `make test` create .venv if needed and install what is missing.
# The install is keyed by pyproject.toml's content: unchanged pyproject → no pip call at all.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
DEMO_DIR ?= data/demo
PIP_QUIET := --quiet --disable-pip-version-check --no-input
# LAVIS (the captioner's second backend) pins libraries the main venv cannot take: it gets its own venv, keyed like
# .venv's stamp but on its requirement lines. The torch line is the main venv's (same local wheels, same kernels).
LAVIS_VENV := .venv-lavis
LAVIS_PY := $(LAVIS_VENV)/bin/python
LAVIS_TORCH_REQ := torch==2.14.1 torchvision==0.29.1
LAVIS_REQ := salesforce-lavis==1.0.2 "numpy<2" "pandas<3"
LAVIS_STAMP := $(LAVIS_VENV)/.installed-$(shell printf '%s\n' '$(LAVIS_TORCH_REQ)' '$(LAVIS_REQ)' | sha256sum | cut -c1-16)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: install lavis-env browser-env stack-env stack stack-down test test-fast lint unit integration demo serve bench \
	video-ablations train-zoo clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first run takes a few minutes)"
	$(PY) -m pip install $(PIP_QUIET) -U pip 2> >(grep -v "is ignored: it is neither" >&2)
	$(PY) -m pip install $(PIP_QUIET) torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored: it is neither" >&2)
	$(PY) -m pip install $(PIP_QUIET) -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
	@rm -f $(VENV)/.installed-*
	@touch $@

# DeepSpeed's CPU communication op, compiled once into this venv (pipelines/ds_ops.py) instead of in the first
# training worker of every run.
DS_OPS := $(VENV)/torch_extensions/.built
$(DS_OPS): $(STAMP)
	$(PY) -m pipelines.ds_ops 2> >(grep -v "Setting accelerator to CPU" >&2)
	@touch $@

install: $(STAMP) $(DS_OPS)

$(LAVIS_STAMP):
	@test -x $(LAVIS_PY) || $(PYTHON) -m venv $(LAVIS_VENV)
	@echo "installing LAVIS into $(LAVIS_VENV) (first run takes a few minutes)"
	$(LAVIS_PY) -m pip install $(PIP_QUIET) -U pip 2> >(grep -v "is ignored: it is neither" >&2)
	$(LAVIS_PY) -m pip install $(PIP_QUIET) $(LAVIS_TORCH_REQ) 2> >(grep -v "is ignored: it is neither" >&2)
	$(LAVIS_PY) -m pip install $(PIP_QUIET) $(LAVIS_REQ) 2> >(grep -v "is ignored: it is neither" >&2)
	@rm -f $(LAVIS_VENV)/.installed-*
	@touch $@

lavis-env: $(LAVIS_STAMP)

# The browser test drives the system Chromium through Playwright (no browser download): Debian's chromium packages.
CHROMIUM := /usr/lib/chromium/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-env:
	@test -x $(CHROMIUM) || { echo "installing chromium (apt) for the browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }; }
	@test -x $(CHROMIUM) || { echo "error: $(CHROMIUM) is missing: apt-get install chromium chromium-driver"; exit 1; }

# `make stack`: the production topology on localhost (Postgres, an S3 object store, the MLflow server, a Ray head and
# worker, the Prefect server with a process work pool and its worker, every deployment registered); state, logs and
# env.sh under $(STACK_DIR). `make stack-down` stops exactly what it started. Postgres is Debian's package.
STACK_DIR ?= .stack
PG_INITDB := /usr/lib/postgresql/15/bin/initdb
stack-env:
	@test -x $(PG_INITDB) || { echo "installing postgresql (apt) for make stack and its test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; }; }
	@test -x $(PG_INITDB) || { echo "error: $(PG_INITDB) is missing: apt-get install postgresql"; exit 1; }

stack: install stack-env
	$(PY) infra/local/stack.py up --dir $(STACK_DIR)

stack-down:
	$(PY) infra/local/stack.py down --dir $(STACK_DIR)

lint: install
	$(VENV)/bin/ruff check .


unit: install
	$(PY) -m pytest -q tests/unit

# The inner loop: lint and the unit tests on every core, less those marked slow (the committed teachers' sampling
# quality, the fake-GPU runs of every stage), which make test runs.
test-fast: lint
	$(PY) -m pytest -q -n auto -p no:cacheprovider -m "not slow" tests/unit

integration: install lavis-env browser-env stack-env
	$(PY) -m pytest -q tests/integration

test: lint lavis-env browser-env stack-env
	$(PY) -m pytest -q --durations=20 tests/unit tests/integration

# The UI: a Prefect server (SQLite under $(DEMO_DIR)/prefect) on 127.0.0.1:4200 serving every flow's deployment, and
# the MLflow UI on the demo's registry at 127.0.0.1:5000; forms default to the demo's data. Ctrl-C stops everything.
# The API requires an auth string: ALCM_PREFECT_AUTH_STRING, or SERVE_ARGS="--auth-string-file FILE", or else one is
# generated into $(DEMO_DIR)/prefect/auth-string. SERVE_ARGS passes further options (alcm serve --help).
serve: export ALCM_REGISTRY_DIR := $(abspath $(DEMO_DIR))/registry
serve: install
	@test -d $(DEMO_DIR)/raw || $(VENV)/bin/alcm toy data --out $(DEMO_DIR)/raw --seed 1234 --images 2000 --videos 40 \
		--dancers 8
	$(VENV)/bin/alcm serve --data-root $(DEMO_DIR)/raw --work $(DEMO_DIR) $(SERVE_ARGS)

# The demo is the end-to-end flow `retrain-animatelcm` on a fresh toy world: outputs under $(DEMO_DIR)/runs/<stage>/<key>/
# with links $(DEMO_DIR)/<name>; it records its datasets and checkpoints in its own registry (a fresh MLflow store).
# Its training budget is shorter than the toy profile's (which `alcm retrain` without overrides and the benches use)
# so that the whole demo fits in 15 minutes on 2 cores: stage 1 120 steps (profile: 300), stage 2 100 (200), stage 3
# 80 per adapter (150), and the teachers' eval at 1/2/4/8/50 steps (profile: also 25).
DEMO_SET := --set distill_image.train.steps=120 --set distill_video.train.steps=100 --set adapt.train.steps=80 \
	--set "evaluate.teacher_steps=[1, 2, 4, 8, 50]"
demo: export ALCM_REGISTRY_DIR := $(abspath $(DEMO_DIR))/registry
demo: install
	rm -rf $(DEMO_DIR)
	@mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/.started
	$(VENV)/bin/alcm toy data --out $(DEMO_DIR)/raw --seed 1234 --images 2000 --videos 40 --dancers 8
	$(VENV)/bin/alcm retrain --images $(DEMO_DIR)/raw/images/parquet --videos $(DEMO_DIR)/raw/videos/wds \
		--dancers $(DEMO_DIR)/raw/dancers --work $(DEMO_DIR) $(DEMO_SET)
	@echo
	@echo "registered versions (registry: $(ALCM_REGISTRY_DIR)):"
	@$(VENV)/bin/alcm registry list
	@echo
	@echo "eval of the stage-2 checkpoint (full report: $(DEMO_DIR)/eval-video/report.md):"
	@$(VENV)/bin/alcm registry show toy-animatelcm-t2v@candidate
	@echo
	@echo "lineage of the final checkpoint:"
	@$(VENV)/bin/alcm lineage toy-animatelcm-adapters
	@echo
	@echo "demo outputs:"
	@echo "  toy world:        $(DEMO_DIR)/raw (labels: $(DEMO_DIR)/raw/{images,videos,dancers}/labels.parquet)"
	@echo "  curated images:   $(DEMO_DIR)/curated-images/{kept,audit}/ + manifest.json"
	@echo "  captioned dances: $(DEMO_DIR)/recaptioned-dancers/captioned/ (captions, candidates, pose control frames)"
	@echo "  curated videos:   $(DEMO_DIR)/curated-videos/{kept,audit}/ + manifest.json"
	@echo "  stage 1 LCM-LoRA: $(DEMO_DIR)/distilled-image/lora/ (diffusers + kohya), preview.png, manifest.json"
	@echo "  stage 2 video:    $(DEMO_DIR)/distilled-video/pipeline/ (AnimateDiffPipeline, 4 steps), motion_adapter/, preview.png"
	@echo "  stage 3 adapters: $(DEMO_DIR)/adapters/{controlnet,image_to_video_adapter}/ + manifest.json"
	@echo "  eval report:      $(DEMO_DIR)/eval-video/{report.md,report.json,plots/,samples.gif}"
	@echo "  registry:         $(ALCM_REGISTRY_DIR) (MLflow; export ALCM_REGISTRY_DIR=$(ALCM_REGISTRY_DIR) to query it with alcm)"
	@echo "  audits:           every row with its decision and reasons, in each output's audit/"
	@echo
	@echo "demo wall time (after install): $$(( $$(date +%s) - $$(cat $(DEMO_DIR)/.started) )) s; make serve opens these in the UI"

bench: install lavis-env video-ablations
	$(PY) bench/curation_quality.py
	$(PY) bench/curation_throughput.py
	$(PY) bench/caption_quality.py
	$(PY) bench/recaption_throughput.py
	$(PY) bench/zero_memory.py
	$(PY) bench/stage1_step.py
	$(PY) bench/fewstep_image.py   # the LoRA of `make demo` by default (--lora DIR for another)
	$(PY) bench/fewstep_video.py --ablation both=$(ABLATION_DIR)/init-both --ablation none=$(ABLATION_DIR)/init-none \
		--ablation coupled=$(ABLATION_DIR)/coupled   # stage 2 of `make demo` against the ablations (make video-ablations)
	$(PY) bench/adapter_fidelity.py   # stage 3 of `make demo`
	$(PY) bench/fault_matrix.py

# Stage 2's ablations on the demo data, the rows of bench/fewstep_video.py (run `make demo` first).
ABLATION_DIR ?= data/bench/stage2
video-ablations: install
	$(VENV)/bin/alcm distill video --input $(DEMO_DIR)/curated-videos --stage1 $(DEMO_DIR)/distilled-image \
		--output $(ABLATION_DIR)/init-both --overwrite --set distill_video.init=both --set distill_video.preview_prompts=[]
	$(VENV)/bin/alcm distill video --input $(DEMO_DIR)/curated-videos --output $(ABLATION_DIR)/init-none --overwrite \
		--set distill_video.init=none --set distill_video.preview_prompts=[]
	$(VENV)/bin/alcm distill video --input $(DEMO_DIR)/curated-videos --output $(ABLATION_DIR)/coupled --overwrite \
		--set distill_video.init=none --set distill_video.decoupled=false --set distill_video.preview_prompts=[]

train-zoo: install
	$(VENV)/bin/alcm toy train-zoo --only scorers --only captioner

clean-demo:
	rm -rf $(DEMO_DIR)
