# Everything installs into $(VENV) from setup.py, so `make test` runs against
# the same pinned stack CI uses. Override with e.g. `make test VENV=/tmp/venv`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: venv test quickstart clean

venv: $(STAMP)

# The stamp makes the (about 1.5 minute) install rerun only when setup.py
# changes. An existing virtualenv is reused, never recreated.
$(STAMP): setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,bench]'
	touch $@

# pytest exits 5 when it collects no tests; a suite that silently ran
# nothing must fail loudly.
test: venv
	@status=0; $(VENV)/bin/python -m pytest tests -q -p no:cacheprovider || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

quickstart: venv
	$(VENV)/bin/neverstop quickstart

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . \( -path './.venv*' -o -path './$(VENV)' -o -path ./.git \) -prune \
		-o -name __pycache__ -type d -prune -exec rm -rf {} +
