# The two set-up-included commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The whole pipeline on the built-in shapes data: autoencoder, codes, prior, 64 samples in samples/.
demo: $(STAMP)
	$(BIN)/vqgen train-ae --force
	$(BIN)/vqgen encode
	$(BIN)/vqgen train-prior --force
	$(BIN)/vqgen sample --n 64

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The benchmarks behind the README's numbers (several hours on a 2-core CPU); JSON in bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/ae_quantizers.py --quantizers ema,vq,simvq,fsq
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --name ae_quantizers-500
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --extra "--restart-dead 0" --name ae_quantizers-500-no-restarts
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --extra "--grad rotation" --name ae_quantizers-500-rotation
	$(BIN)/python bench/priors.py --ae runs/bench/ae-ema --minutes 10
	$(BIN)/python bench/sampling.py --prior runs/bench/prior-transformer --prior runs/bench/prior-pixelcnn
	$(BIN)/python bench/speed.py --steps 100
	$(BIN)/python bench/datasets.py --data mnist
	$(BIN)/python bench/datasets.py --data fashion-mnist
	$(BIN)/python bench/datasets.py --data shapes
	$(BIN)/python bench/guidance.py --data mnist --prior runs/bench/mnist/prior
	$(BIN)/python bench/guidance.py --data fashion-mnist --prior runs/bench/fashion-mnist/prior
	$(BIN)/python bench/guidance.py --data shapes --prior runs/bench/shapes/prior --scales 1,1.5,2,3
	$(BIN)/python bench/natural.py --steps 6000 --adversarial 0.2 --adversarial-start 2000
	$(BIN)/python bench/natural.py --variants adversarial --adversarial 0.2 --adversarial-start 1600 --adversarial-steps 3800 --feature-matching 0.3 --codebook-size 16384 --name natural-cifar10-k16384-fm03
	$(BIN)/python bench/prior_vocab.py --sizes 512,2048,8192,16384
	$(BIN)/python bench/prior_vocab.py --steps 5 --name prior-vocab-factorised
	$(BIN)/python bench/factorised.py --arms fsq-240x64 --prior-steps 1492
	$(BIN)/python bench/image_size.py
	$(BIN)/python bench/nearest_code.py
	$(BIN)/python bench/levels.py --ae-minutes 8 --prior-minutes 8 --n 5000
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/vs_vqtorch.py --data mnist --restart-below 0.3

lint: $(STAMP)
	$(BIN)/ruff check vqgen tests bench

clean:
	rm -rf runs samples
