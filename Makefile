# The two commands a newcomer needs: `make run` and `make test` (see README.md).
.PHONY: run test lint system-test-tools package package-cuda

run:
	@scripts/bootstrap.sh
	.venv/bin/fathom-desktop

test: system-test-tools
	@scripts/bootstrap.sh --test
	FATHOM_LLAMA_TOOLS="$$(scripts/llama_tools.sh)" QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -q

# The packaging tests validate the desktop entry with desktop-file-validate (Debian's
# desktop-file-utils); installed here when missing and we may (root with apt-get).
system-test-tools:
	@command -v desktop-file-validate >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -qq desktop-file-utils >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq desktop-file-utils >/dev/null 2>&1)); } || \
		echo "note: desktop-file-validate is missing; install desktop-file-utils for the packaging tests"

lint:
	.venv/bin/ruff check convert fathom_desktop tests bench training packaging

# The packaged app (packaging/README.md): the CPU archive from .venv, the CUDA one from
# .venv-cuda, which packaging/cuda-backend.sh makes (its compile takes hours on a small machine
# and is reused while its settings stay the same; CUDA_ARCHS=86 builds one GPU architecture).
package:
	@scripts/bootstrap.sh --test
	.venv/bin/python packaging/build.py

package-cuda:
	packaging/cuda-backend.sh
	.venv-cuda/bin/python packaging/build.py --cuda
