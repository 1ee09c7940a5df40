# The two commands a newcomer needs: `make run` and `make test` (see README.md).
.PHONY: run test lint

run:
	@scripts/bootstrap.sh
	.venv/bin/fathom-desktop

test:
	@scripts/bootstrap.sh --test
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check convert fathom_desktop tests bench training packaging
