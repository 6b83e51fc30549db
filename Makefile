# drfs - one non-recursive Makefile.
#
#   make            build ./drfs
#   make test       install what is missing, build, run unit (under ASan+UBSan)
#                   and integration tests
#   make run        install what is missing, build, mount a demo data directory
#   make soak       the crash test with 1,000 kill points
#   make bench      run the benchmarks in bench/
#   make install    install drfs and the mount(8) helper
#   make SAN=1      build everything with AddressSanitizer + UBSan

CC       ?= cc
CFLAGS   ?= -O2 -g
PREFIX   ?= /usr/local
SAN      ?=

WARNINGS := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
BASEFLAGS := -std=gnu17 $(WARNINGS) -D_GNU_SOURCE -MMD -MP
PKG_CFLAGS := $(shell pkg-config --cflags fuse3 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs fuse3 liburing libzstd libcrypto libcurl 2>/dev/null) -lpthread
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

ifeq ($(SAN),1)
BUILD := build/san
EXTRA := $(SANFLAGS)
else
BUILD := build/release
EXTRA :=
endif

COMMON_SRC := common/log.c common/util.c
JOURNAL_SRC := journal/record.c journal/journal.c journal/reader.c journal/apply.c journal/reconcile.c
STORE_SRC  := $(sort $(wildcard store/*.c))
REPLICATE_SRC := $(sort $(wildcard replicate/*.c))
FS_SRC     := fs/inode.c fs/mutate.c fs/pending.c fs/ops.c fs/session.c fs/snapshot.c fs/times.c fs/uring.c
TOOLS_SRC  := tools/drfs.c tools/cmd_init.c tools/cmd_mount.c tools/cmd_status.c tools/cmd_journal.c tools/cmd_snapshot.c tools/snapctl.c
DRFS_SRC   := $(COMMON_SRC) $(JOURNAL_SRC) $(STORE_SRC) $(REPLICATE_SRC) $(FS_SRC) $(TOOLS_SRC)

obj = $(patsubst %.c,$(1)/%.o,$(2))

.PHONY: all test unit integration soak run bench install uninstall deps clean
all: drfs

build/release/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(BASEFLAGS) $(PKG_CFLAGS) $(CFLAGS) -c -o $@ $<

# Unit tests are always built with the sanitizers.
build/san/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC [san] $<"
	@$(CC) $(BASEFLAGS) $(PKG_CFLAGS) $(CFLAGS) $(SANFLAGS) -c -o $@ $<

# Relink when switching between SAN=1 and a plain build.
FLAVOUR := build/.flavour-$(if $(SAN),san,release)
$(FLAVOUR):
	@mkdir -p build && rm -f build/.flavour-* && touch $@

drfs: $(call obj,$(BUILD),$(DRFS_SRC)) $(FLAVOUR)
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(EXTRA) $(LDFLAGS) -o $@ $(filter %.o,$^) $(PKG_LIBS)

UNIT_TESTS := tests/unit/test_common tests/unit/test_fs tests/unit/test_journal tests/unit/test_store tests/unit/test_repo tests/unit/test_replicate
tests/unit/test_common: build/san/tests/unit/test_common.o $(call obj,build/san,$(COMMON_SRC))
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -Wl,--wrap=fsync,--wrap=write -o $@ $^ -lcmocka
tests/unit/test_fs: build/san/tests/unit/test_fs.o $(call obj,build/san,$(COMMON_SRC) $(JOURNAL_SRC) fs/inode.c fs/mutate.c fs/pending.c fs/times.c)
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -Wl,--wrap=fchownat -o $@ $^ -lcmocka $(PKG_LIBS)
tests/unit/test_journal: build/san/tests/unit/test_journal.o $(call obj,build/san,$(COMMON_SRC) $(JOURNAL_SRC))
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $^ -lcmocka $(PKG_LIBS)
tests/unit/test_store: build/san/tests/unit/test_store.o $(call obj,build/san,$(COMMON_SRC) $(JOURNAL_SRC) $(STORE_SRC))
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $^ -lcmocka $(PKG_LIBS)
tests/unit/test_repo: build/san/tests/unit/test_repo.o $(call obj,build/san,$(COMMON_SRC) $(JOURNAL_SRC) $(STORE_SRC))
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $^ -lcmocka $(PKG_LIBS)
tests/unit/test_replicate: build/san/tests/unit/test_replicate.o $(call obj,build/san,$(COMMON_SRC) $(JOURNAL_SRC) $(STORE_SRC) $(REPLICATE_SRC))
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $^ -lcmocka $(PKG_LIBS)

HELPERS := tests/helpers/fsops tests/helpers/crashload tests/helpers/fsmodel
tests/helpers/%: tests/helpers/%.c
	@echo "  CC      $@"
	@$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $<

deps:
	@tools/install-deps.sh

unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; ./$$t; done

integration: drfs $(HELPERS)
	@tests/integration/run.sh

soak: deps
	@$(MAKE) --no-print-directory drfs $(HELPERS)
	@CRASH_POINTS=1000 TEST_TIMEOUT=7200 TESTS=0013-crash.sh tests/integration/run.sh

test: deps
	@$(MAKE) --no-print-directory drfs $(UNIT_TESTS) $(HELPERS)
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

run: deps
	@$(MAKE) --no-print-directory drfs
	@tools/demo.sh

bench: deps
	@$(MAKE) --no-print-directory drfs
	@bench/run.sh

install: drfs
	install -D -m 0755 drfs $(DESTDIR)$(PREFIX)/bin/drfs
	install -d $(DESTDIR)/sbin
	ln -sf $(PREFIX)/bin/drfs $(DESTDIR)/sbin/mount.fuse.drfs

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/drfs $(DESTDIR)/sbin/mount.fuse.drfs

clean:
	rm -rf build drfs $(UNIT_TESTS) $(HELPERS)

-include $(shell find build -name '*.d' 2>/dev/null)
