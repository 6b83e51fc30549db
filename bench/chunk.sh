#!/bin/sh
# chunk.sh - single-core throughput of the store's hot paths (chunker,
# SHA-256, zstd level 3; bench/chunkbench.c says what the data is), side by
# side with the reference tools on the same machine:
#   openssl speed -seconds 3 -evp sha256   (its 16384-byte column)
#   zstd -b3 on the same 64 MiB mixed data (whole file, and in 64 KiB blocks
#   like our blobs: -B65536)
# Usage: bench/chunk.sh        (from anywhere; builds build/chunkbench)
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mkdir -p build
bin=build/chunkbench

CC=${CC:-cc}
echo "== building $bin"
$CC -O2 -g -std=gnu17 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -D_GNU_SOURCE \
	-o "$bin" bench/chunkbench.c store/chunker.c store/blob.c common/log.c \
	-lcrypto -lzstd -lpthread

if ! command -v zstd >/dev/null 2>&1; then
	echo "== zstd(1) is missing: installing the Debian package"
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y zstd >/dev/null
	else
		sudo apt-get install -y zstd >/dev/null
	fi
fi

tmp=$(mktemp -d /tmp/drfs-chunkbench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM

echo "== $bin"
"./$bin" | tee "$tmp/ours"
"./$bin" -w "$tmp/mixed.bin"

echo "== openssl speed -seconds 3 -evp sha256"
openssl speed -seconds 3 -evp sha256 2>/dev/null | tee "$tmp/openssl" | tail -n 2

echo "== zstd -b3 (64 MiB mixed, whole file; then -B65536)"
zstd -b3 "$tmp/mixed.bin" 2>&1 | tr '\r' '\n' | grep 'MB/s' | tail -n 1 | tee "$tmp/zstd"
zstd -b3 -B65536 "$tmp/mixed.bin" 2>&1 | tr '\r' '\n' | grep 'MB/s' | tail -n 1 | tee "$tmp/zstdB"

ours() { awk -v n="$1" '$1 == n { print $2; exit }' "$tmp/ours"; }
# openssl prints 1000s of bytes per second; the last column is 16384-byte blocks
ossl=$(awk '/^sha256/ { v = $NF; sub(/k$/, "", v); printf "%.1f", v / 1000 }' "$tmp/openssl")
# zstd -b: "... (x1.487), 250.1 MB/s, 1200.3 MB/s" (older: ",  250.1 MB/s ,1200.3 MB/s")
zc() { sed -n 's/.*), *\([0-9.]*\) MB\/s.*/\1/p' "$1"; }
zd() { sed -n 's/.*MB\/s *, *\([0-9.]*\) MB\/s.*/\1/p' "$1"; }

row() {
	awk -v what="$1" -v a="$2" -v b="$3" -v ref="$4" 'BEGIN {
		r = (b + 0 > 0) ? sprintf("%.2f", a / b) : "-";
		printf "%-22s %10s %10s %7s   %s\n", what, a, b, r, ref }'
}

echo
echo "single core, MB/s (10^6 bytes/s); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf "%-22s %10s %10s %7s   %s\n" "" "ours" "theirs" "ratio" "theirs is"
row "chunker_cut (1 GiB)" "$(ours chunker_cut)" "-" "-"
row "SHA-256" "$(ours sha256-64KiB)" "$ossl" "openssl speed -evp sha256, 16 KiB blocks (ours: 64 KiB)"
row "zstd -3 compress" "$(ours zstd3-compress)" "$(zc "$tmp/zstdB")" "zstd -b3 -B65536"
row "zstd -3 decompress" "$(ours zstd3-decompress)" "$(zd "$tmp/zstdB")" "zstd -b3 -B65536"
row "zstd -3 compress" "$(ours zstd3-compress)" "$(zc "$tmp/zstd")" "zstd -b3 (whole 64 MiB file)"
row "zstd -3 decompress" "$(ours zstd3-decompress)" "$(zd "$tmp/zstd")" "zstd -b3 (whole 64 MiB file)"
