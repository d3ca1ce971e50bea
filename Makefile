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

# Every JSON in bench/results/, rebuilt by the line that made it (tests/test_docs.py checks that each JSON's command is
# here), in an order where a line's input runs come from an earlier line: 21 to 22 hours on 2 cores, about 18 h of it
# the stage times the JSONs record and the rest estimated (docs/benchmarks.md#rebuilding-these-numbers). A command
# that leaves a setting to the defaults runs with today's defaults, which may differ from those of the JSON's time.
bench: $(STAMP)
	# MNIST stage one (bench/ae_quantizers.py): quantizers, restarts, the rotation trick, lookups, the preset's choice
	$(BIN)/python bench/ae_quantizers.py --steps 1500 --quantizers ema,vq,simvq,fsq --extra '' --name ae_quantizers
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --extra '' --name ae_quantizers-500
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --extra '--restart-dead 0' --name ae_quantizers-500-no-restarts
	$(BIN)/python bench/ae_quantizers.py --steps 500 --quantizers ema,vq,simvq --extra '--grad rotation' --name ae_quantizers-500-rotation
	$(BIN)/python bench/ae_quantizers.py --steps 3000 --quantizers ema --extra=--cosine --name lookup-cosine
	$(BIN)/python bench/ae_quantizers.py --steps 3000 --quantizers ema --extra '--cosine --lookup-dim 16' --name lookup-cosine-16
	$(BIN)/python bench/ae_quantizers.py --steps 13000 --quantizers ema --extra '--ema-weights 0.999' --name ae-mnist-13000
	$(BIN)/python bench/ae_quantizers.py --steps 12500 --quantizers ema --extra '--ema-weights 0.999 --codebook-size 1024' --name ae-mnist-k1024
	# stage two on runs/bench/ae-ema (the 1,500-step ema run above), then sampling from those two priors
	$(BIN)/python bench/priors.py --ae runs/bench/ae-ema --minutes 10.0 --archs transformer --name priors-transformer
	$(BIN)/python bench/priors.py --ae runs/bench/ae-ema --minutes 10.0 --archs pixelcnn --name priors-pixelcnn
	$(BIN)/python bench/sampling.py --prior runs/bench/prior-transformer --prior runs/bench/prior-pixelcnn
	# training speed
	$(BIN)/python bench/speed.py --steps 60 --configs fp32,compile --procs 1,2 --name speed
	$(BIN)/python bench/speed.py --steps 30 --configs bf16 --procs 1 --name speed-bf16
	$(BIN)/python bench/speed.py --steps 100 --repeats 3 --configs bf16,compile --procs 1 --name speed-compile
	$(BIN)/python bench/speed.py --levers --steps 60 --repeats 3
	# both stages per data set (runs/bench/<data>/), MNIST's previous preset in runs/bench/mnist-k512/, guidance sweeps
	$(BIN)/python bench/datasets.py --data shapes --n 5000
	$(BIN)/python bench/datasets.py --data mnist --n 5000
	$(BIN)/python bench/datasets.py --data fashion-mnist --reuse --n 5000
	$(BIN)/python bench/datasets.py --data mnist --ae-steps 3000 --ae-extra '--codebook-size 512 --ema-weights 0' --n 5000 --name dataset-mnist-k512
	$(BIN)/vqgen train-prior --codes runs/bench/mnist-k512/codes.safetensors --steps 4500 --batch-size 64 --lr 1e-3 --ema-weights 0.999 --eval-every 1500 --out runs/mnist/prior-a --force
	$(BIN)/python bench/guidance.py --data shapes --prior runs/bench/shapes/prior --scales 1,1.5,2,3 --n 5000
	$(BIN)/python bench/guidance.py --data mnist --prior runs/bench/mnist/prior --scales 1,1.25,1.5,2,3 --n 5000
	$(BIN)/python bench/guidance.py --data fashion-mnist --prior runs/bench/fashion-mnist/prior --scales 1,1.25,1.5,2,3 --n 5000
	$(BIN)/python bench/guidance.py --data mnist --prior runs/mnist/prior-a --scales 1,1.25,1.5,2,3 --n 5000 --name guidance-mnist-4500-steps
	# fp32 against bf16 (on runs/bench/mnist/codes.safetensors; --quality prior on the codes --quality ae leaves)
	$(BIN)/python bench/precision.py --speed-steps 200 --name precision
	$(BIN)/python bench/precision.py --speed-steps 200 --quality ae --no-speed --name precision-quality
	$(BIN)/python bench/precision.py --speed-steps 200 --quality prior --archs transformer,pixelcnn --no-speed --name precision-prior
	$(BIN)/python bench/sampling.py --prior runs/bench/mnist/prior --prior runs/bench/precision/prior-pixelcnn-bf16 --name sampling-limit
	# CIFAR-10 stage one, with a prior where --prior is given
	$(BIN)/python bench/natural.py --steps 6000 --minutes 14.0 --adversarial-steps 5600 --feature-matching 0.1 --prior --adversarial 0.2 --adversarial-start 1600 --variants mse,adversarial --extra '' --name natural-cifar10 --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 5600 --feature-matching 0.1 --prior --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --extra '--codebook-size 2048' --name natural-cifar10-k2048 --n 5000 --reuse
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 5600 --feature-matching 0.1 --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --codebook-size 2048 --extra '' --name natural-cifar10-k2048-intel --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 5600 --feature-matching 0.1 --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --extra '--codebook-size 8192' --name natural-cifar10-k8192 --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 4700 --feature-matching 0.1 --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --extra '--codebook-size 8192' --name natural-cifar10-k8192-4700 --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 4700 --feature-matching 0.3 --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --extra '--codebook-size 8192' --name natural-cifar10-k8192-fm03 --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 3800 --feature-matching 0.3 --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --codebook-size 16384 --extra '' --name natural-cifar10-k16384-fm03 --n 5000
	$(BIN)/python bench/natural.py --steps 6000 --minutes 6.0 --feature-matching 0.0 --prior --prior-extra '--minutes 13' --adversarial 0.1 --adversarial-start 2000 --variants mse --extra '--downsample 2' --name natural-cifar10-16x16 --n 5000 --reuse
	# step and lookup costs
	$(BIN)/python bench/prior_vocab.py --sizes 512,2048,8192,16384 --grid 8 --batch 64 --steps 10 --repeats 3
	$(BIN)/python bench/prior_vocab.py --sizes 512,2048,8192,16384,16384=128x128,15360=240x64 --grid 8 --batch 64 --steps 5 --repeats 3 --name prior-vocab-factorised
	$(BIN)/python bench/nearest_code.py --sizes 512,2048,8192,16384 --rows 4096 --dim 64 --repeats 20
	$(BIN)/python bench/image_size.py --steps 5 --repeats 3
	# factorised codes, two levels at 64 pixels, folders larger than memory, folders of photos at their defaults
	$(BIN)/python bench/factorised.py --arms fsq-240x64 --default-ae-steps 3000 --ae-steps-of '' --prior-steps 1492 --n 5000 --name factorised-cifar10 --reuse
	$(BIN)/python bench/factorised.py --arms fsq-kmeans-240x64 --default-ae-steps 3000 --ae-steps-of '' --prior-steps 1492 --n 5000 --name factorised-cifar10 --reuse
	$(BIN)/python bench/factorised.py --arms fsq-flat --default-ae-steps 3000 --ae-steps-of '' --prior-steps 1492 --n 5000 --name factorised-cifar10 --reuse
	$(BIN)/python bench/factorised.py --arms ema16384-128x128 --default-ae-steps 3000 --ae-steps-of 'ema16384-128x128=1800' --prior-steps 1492 --n 5000 --name factorised-cifar10 --reuse
	mkdir -p runs/bench/factorised-cifar10-steps3600 && cp -rp runs/bench/factorised-cifar10/ae-ema16384-128x128 runs/bench/factorised-cifar10/codes-ema16384-128x128.safetensors runs/bench/factorised-cifar10-steps3600/
	$(BIN)/python bench/factorised.py --arms ema16384-128x128 --default-ae-steps 3000 --ae-steps-of 'ema16384-128x128=1800' --prior-steps 3600 --n 5000 --name factorised-cifar10-steps3600 --reuse
	mv docs/img/factorised-ema16384-128x128-samples.png docs/img/factorised-ema16384-128x128-steps3600-samples.png
	cp runs/bench/factorised-cifar10/samples-ema16384-128x128/grid.png docs/img/factorised-ema16384-128x128-samples.png
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/factorised-cifar10-steps3600/prior-ema16384-128x128 --scales 3 --n 5000 --name guidance-cifar10-factorised
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/factorised-cifar10-steps3600/prior-ema16384-128x128 --scales 2 --n 5000 --name guidance-cifar10-factorised-s2
	$(BIN)/vqgen sample --prior runs/bench/factorised-cifar10-steps3600/prior-ema16384-128x128 --n 80 --class all --guidance 3 --out runs/bench/factorised-cifar10-steps3600/samples-guidance3
	cp runs/bench/factorised-cifar10-steps3600/samples-guidance3/grid.png docs/img/factorised-ema16384-samples-guidance3.png
	$(BIN)/python bench/natural.py --steps 6000 --adversarial-steps 5600 --feature-matching 0.1 --prior --prior-extra '' --adversarial 0.2 --adversarial-start 1600 --variants adversarial --extra '--codebook-size 2048' --name natural-cifar10-k2048-avx2 --n 5000
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/natural-cifar10-k2048-avx2/adversarial/prior --scales 2,3 --n 5000 --name guidance-cifar10-flat
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/natural-cifar10-k2048-avx2/adversarial/prior --scales 4 --n 5000 --name guidance-cifar10-flat-s4
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/natural-cifar10-k2048-avx2/adversarial/prior --scales 5 --n 5000 --name guidance-cifar10-flat-s5
	for s in 3 4 5; do $(BIN)/vqgen sample --prior runs/bench/natural-cifar10-k2048-avx2/adversarial/prior --n 80 --class all --guidance $$s --out runs/bench/natural-cifar10-k2048-avx2/adversarial/samples-guidance$$s && cp runs/bench/natural-cifar10-k2048-avx2/adversarial/samples-guidance$$s/grid.png docs/img/cifar10-samples-guidance$$s.png || exit 1; done
	$(BIN)/vqgen train-prior --codes runs/bench/natural-cifar10-k2048-avx2/adversarial/codes.safetensors --out runs/bench/natural-cifar10-k2048-avx2/adversarial/prior-15min --minutes 15 --force
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/natural-cifar10-k2048-avx2/adversarial/prior-15min --scales 3 --n 5000 --name guidance-cifar10-flat-15min
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/factorised-cifar10/prior-ema16384-128x128 --scales 3 --n 5000 --name guidance-cifar10-factorised-15min
	mkdir -p runs/bench/factorised-cifar10-steps2500 && cp -rp runs/bench/factorised-cifar10/ae-fsq-240x64 runs/bench/factorised-cifar10/codes-fsq-240x64.safetensors runs/bench/factorised-cifar10-steps2500/
	$(BIN)/python bench/factorised.py --arms fsq-240x64 --default-ae-steps 3000 --ae-steps-of '' --prior-steps 2500 --n 5000 --name factorised-cifar10-steps2500 --reuse
	mv docs/img/factorised-fsq-240x64-samples.png docs/img/factorised-fsq-240x64-steps2500-samples.png
	cp runs/bench/factorised-cifar10/samples-fsq-240x64/grid.png docs/img/factorised-fsq-240x64-samples.png
	$(BIN)/python bench/levels.py --ae-minutes 8.0 --prior-minutes 8.0 --image-size 64 --n 5000 --classifier-steps 600 --arms one,two --name levels-64
	$(BIN)/python bench/bigdata.py --images 20000 --small 5000 --size 128 --steps 20 --work /tmp/vqgen-bigdata
	$(BIN)/python bench/folders.py --data ../shared/datasets/TinyImageNet20 --n 5000 --reuse --root runs/bench/tin20 --name folder-tinyimagenet20-grid8 --ae-options '--downsample 8 --codebook-size 2048 --steps 2700 --adversarial 0' --prior-options '--steps 1300'
	$(BIN)/python bench/guidance.py --data ../shared/datasets/TinyImageNet20 --prior runs/bench/tin20/prior --scales 3 --n 5000 --name guidance-tinyimagenet20-grid8
	$(BIN)/python bench/guidance.py --data ../shared/datasets/TinyImageNet20 --prior runs/bench/tin20/prior --scales 2,4 --n 5000 --name guidance-tinyimagenet20-grid8-s2-4
	$(BIN)/vqgen sample --prior runs/bench/tin20/prior --n 160 --class all --guidance 3 --out runs/bench/tin20/samples-guidance3
	cp runs/bench/tin20/samples-guidance3/grid.png docs/img/folder-tinyimagenet20-grid8-samples-guidance3.png
	$(BIN)/python bench/folders.py --data ../shared/datasets/Flowers64 --features-from ../shared/datasets/TinyImageNet20 --n 5000 --reuse --root runs/bench/flowers64-grid8 --name folder-flowers64-grid8 --ae-options '--downsample 8 --codebook-size 2048 --steps 2700 --adversarial 0' --prior-options '--steps 1300'
	$(BIN)/python bench/folders.py --data ../shared/datasets/TinyImageNet20 --n 5000 --name folder-tinyimagenet20-grid16 --ae-options '--downsample 4 --codebook-size 2048 --minutes 15' --prior-options '--patch 1 --minutes 15'
	$(BIN)/python bench/folders.py --data ../shared/datasets/TinyImageNet20 --n 5000 --name folder-tinyimagenet20-k16384 --ae-options '--downsample 8 --codebook-size 16384 --code-factors 128x128 --minutes 15' --prior-options '--steps 1300'
	# the size rule's present recipe above 32 pixels (a 16×16 grid read as 2×2 patches): first given minutes, then with no flag
	$(BIN)/python bench/folders.py --data ../shared/datasets/TinyImageNet20 --n 5000 --reuse --name folder-tinyimagenet20-patch --ae-options '--downsample 4 --codebook-size 512 --minutes 15' --prior-options '--patch 2 --minutes 15'
	$(BIN)/python bench/guidance.py --data ../shared/datasets/TinyImageNet20 --prior runs/bench/folder-tinyimagenet20-patch/prior --scales 1.5,2 --n 5000 --name guidance-tinyimagenet20-patch
	$(BIN)/python bench/folders.py --data ../shared/datasets/TinyImageNet20 --n 5000
	$(BIN)/python bench/guidance.py --data ../shared/datasets/TinyImageNet20 --prior runs/bench/folder-tinyimagenet20/prior --scales 4 --n 5000 --name guidance-tinyimagenet20-s4
	$(BIN)/vqgen sample --prior runs/bench/folder-tinyimagenet20/prior --n 160 --class all --guidance 4 --out runs/bench/folder-tinyimagenet20/samples-guidance4
	cp runs/bench/folder-tinyimagenet20/samples-guidance4/grid.png docs/img/folder-tinyimagenet20-samples-guidance4.png
	$(BIN)/python bench/folders.py --data ../shared/datasets/Flowers64 --features-from ../shared/datasets/TinyImageNet20 --n 5000
	# measures that see layout and diversity (structure gap, precision/recall, density/coverage, two-sample test): what
	# they read on real images, then guidance sweeps by them on the defaults of TinyImageNet20, CIFAR-10 and MNIST
	$(BIN)/python bench/measures.py --data ../shared/datasets/TinyImageNet20
	$(BIN)/python bench/measures.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz
	$(BIN)/python bench/guidance.py --data ../shared/datasets/TinyImageNet20 --prior runs/bench/folder-tinyimagenet20/prior --scales 1,1.5,2,3,4 --n 5000 --name guidance-tinyimagenet20
	for s in 1 3 4; do $(BIN)/vqgen sample --prior runs/bench/folder-tinyimagenet20/prior --n 160 --class all --guidance $$s --out runs/bench/folder-tinyimagenet20/samples-g$$s; done
	$(BIN)/python -c "from PIL import Image; ims = [Image.open(f'runs/bench/folder-tinyimagenet20/samples-g{g}/grid.png') for g in (1, 3, 4)]; w, h = ims[0].size; out = Image.new('RGB', (3 * w + 20, h * 7 // 20), 'white'); [out.paste(im.crop((0, 0, w, h * 7 // 20)), (i * (w + 10), 0)) for i, im in enumerate(ims)]; out.save('docs/img/guidance-tinyimagenet20-samples-1-3-4.jpg', quality=90)"
	$(BIN)/vqgen train-ae --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --out runs/bench/cifar10-preset/ae --force
	$(BIN)/vqgen encode --ae runs/bench/cifar10-preset/ae --out runs/bench/cifar10-preset/codes.safetensors
	$(BIN)/vqgen train-prior --codes runs/bench/cifar10-preset/codes.safetensors --out runs/bench/cifar10-preset/prior --force
	$(BIN)/python bench/guidance.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz --prior runs/bench/cifar10-preset/prior --scales 1.5,2,3,4 --n 5000 --name guidance-cifar10
	for s in 1.5 3 4; do $(BIN)/vqgen sample --prior runs/bench/cifar10-preset/prior --n 80 --class all --guidance $$s --out runs/bench/cifar10-preset/samples-g$$s && cp runs/bench/cifar10-preset/samples-g$$s/grid.png docs/img/guidance-cifar10-samples-$$s.png; done
	$(BIN)/vqgen train-ae --data mnist --data-root ../shared/datasets --out runs/bench/mnist-preset/ae --force
	$(BIN)/vqgen encode --ae runs/bench/mnist-preset/ae --out runs/bench/mnist-preset/codes.safetensors
	$(BIN)/vqgen train-prior --codes runs/bench/mnist-preset/codes.safetensors --out runs/bench/mnist-preset/prior --force
	$(BIN)/python bench/guidance.py --data mnist --prior runs/bench/mnist-preset/prior --scales 1,1.5,2,3 --n 5000 --name guidance-mnist-rule
	$(BIN)/vqgen train-ae --out runs/bench/shapes-preset/ae --force
	$(BIN)/vqgen encode --ae runs/bench/shapes-preset/ae --out runs/bench/shapes-preset/codes.safetensors
	$(BIN)/vqgen train-prior --codes runs/bench/shapes-preset/codes.safetensors --out runs/bench/shapes-preset/prior --force
	$(BIN)/python bench/guidance.py --data shapes --prior runs/bench/shapes-preset/prior --scales 1,1.5,2,3 --n 5000 --name guidance-shapes-rule
	# beside vector-quantize-pytorch (a benchmark extra): the present MNIST preset, then the previous one
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/vs_vqtorch.py --data mnist --restart-below 0.3
	$(BIN)/python bench/vs_vqtorch.py --data mnist --steps 3000 --codebook-size 512 --ema-weights 0 --name vs_vqtorch-mnist-3000

lint: $(STAMP)
	$(BIN)/ruff check vqgen tests bench

clean:
	rm -rf runs samples
