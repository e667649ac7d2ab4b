# pg_fly: PGXS build of the extension, plus the project's test and demo entry points.
#   make && sudo make install        build and install (PG_CONFIG=/path/to/pg_config selects the server)
#   sudo make test                   everything: dependencies, unit, regression, isolation, simulator tests
#   make installcheck                regression and isolation tests only (as a non-root user, after install)
#   make PGFLY_STRICT=1              warnings are errors (-Werror -Wshadow), as in CI; off by default so that a newer
#                                    compiler's new warning never stops an install

EXTENSION = pg_fly
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" pg_fly.control)
MODULE_big = pg_fly
SRCS = $(sort $(wildcard src/*.cpp src/core/*.cpp src/pg/*.cpp))
OBJS = $(SRCS:.cpp=.o)
DATA = $(sort $(wildcard src/sql/pg_fly--*.sql))

PG_CONFIG ?= pg_config
PKG_DEPS = libcurl jansson openssl

# Regression tests: sql/*.sql against expected/*.out on a throwaway instance with pg_fly preloaded.
REGRESS = install seed_sql trigger never_block functions privileges boundary operations drift drift_index image_rollouts worker_wake intents retention drop
REGRESS_OPTS = --inputdir=. --temp-instance=./tmp_check --temp-config=test/regress.conf
ISOLATION = concurrent_tier_changes policy_arrives policy_held drift_vs_tier_change drift_after_carried_out \
            trigger_cache intents_order
ISOLATION_OPTS = --inputdir=test/isolation --temp-instance=./tmp_check_iso --temp-config=test/regress.conf \
	--load-extension=pg_fly

.DEFAULT_GOAL := all
.PHONY: test demo unit

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

unit:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGFLY_STRICT=$(if $(filter 1,$(PGFLY_STRICT)),ON,OFF) >/dev/null
	cmake --build build -j2
	cd build && ctest --output-on-failure

PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifeq ($(wildcard $(PGXS)),)
all install installcheck:
	@echo "PostgreSQL server headers not found (PG_CONFIG=$(PG_CONFIG))." >&2
	@echo "Run 'sudo make test' (it installs them) or: apt-get install postgresql-server-dev-15" >&2
	@exit 1
else
# C++17 with PostgreSQL's own headers as system headers, so -Wextra stays about our code.
PG_CPPFLAGS = -Iinclude -DPGFLY_VERSION=\"$(EXTVERSION)\" -isystem $(shell $(PG_CONFIG) --includedir-server) $(shell pkg-config --cflags $(PKG_DEPS))
PG_CXXFLAGS = -std=c++17 -Wall -Wextra -Wno-register -Wno-missing-field-initializers -MMD -MP
ifeq ($(PGFLY_STRICT),1)
PG_CXXFLAGS += -Werror -Wshadow
endif
SHLIB_LINK = $(shell pkg-config --libs $(PKG_DEPS)) -lstdc++
# No LLVM bitcode: it would compile the C++17 sources with clang's default standard, and JIT inlining of an
# HTTP client gains nothing.
override with_llvm = no
include $(PGXS)
# Header dependencies (-MMD), so that a changed header rebuilds what includes it.
-include $(OBJS:.o=.d)
# Objects built for another server, or without the strict flags, are rebuilt: the stamp names what they were built
# with, and is rewritten only when that changes.
BUILD_STAMP = .pgfly-build
BUILD_WITH := $(PG_CONFIG) $(shell $(PG_CONFIG) --version) strict=$(PGFLY_STRICT)
ifneq ($(BUILD_WITH),$(shell cat $(BUILD_STAMP) 2>/dev/null))
$(shell echo '$(BUILD_WITH)' >$(BUILD_STAMP))
endif
$(OBJS): $(BUILD_STAMP)
EXTRA_CLEAN = $(OBJS:.o=.d) $(BUILD_STAMP)
endif
