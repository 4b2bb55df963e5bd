# permguard.secure — developer entry points. Every target does its own set-up.
#   make demo                     provision a three-host local fleet and probe it
#   make test                     lint, sanity, unit tests and every molecule scenario
#   make molecule SCENARIO=none   one molecule scenario
SHELL := /bin/bash
.DEFAULT_GOAL := help

PG_CACHE ?= $(HOME)/.cache/permguard-secure
VENV ?= $(CURDIR)/.venv
SCENARIO ?= none
export PG_CACHE VENV
# One collections path per checkout, so two clones never resolve permguard.secure to each other.
export PG_COLLECTIONS := $(PG_CACHE)/collections-$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-12)
export PG_RELEASE_DIR := $(PG_CACHE)/release
export CONTAINERS_CONF := $(CURDIR)/tests/fleet/containers.conf
export ANSIBLE_COLLECTIONS_PATH := $(PG_COLLECTIONS)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help setup lint sanity unit molecule test demo demo-clean build clean

help:
	@sed -n 's/^#   //p' Makefile

setup:
	@tests/setup.sh

lint: setup
	@python tests/run_suite.py lint

sanity: setup
	@python tests/run_suite.py sanity

unit: setup
	@python tests/run_suite.py unit

molecule: setup
	@python tests/run_suite.py molecule --scenario $(SCENARIO)

test: setup
	@python tests/run_suite.py all

demo: setup
	@python tests/demo/demo.py

demo-clean:
	@python tests/demo/demo.py --destroy

build: setup
	@mkdir -p build && ansible-galaxy collection build --force --output-path build .

clean:
	@rm -rf build tests/output .pytest_cache .ruff_cache
