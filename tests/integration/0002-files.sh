#!/bin/bash
# Regular files, directories, symlinks, hard links, names, O_APPEND, truncate,
# statfs; the mount and the backing tree must agree entry by entry.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"

printf 'hello\n' >"$M/file"
check_eq "read back" hello "$(cat "$M/file")"
sync "$M/file"   # durable in the journal; the applier writes it to the backing file right after
for _ in $(seq 1 50); do [ "$(cat "$B/file")" = hello ] && break; sleep 0.1; done
check_eq "written through to the backing tree" hello "$(cat "$B/file")"
mkdir -p "$M/a/b/c"
check "nested directories" [ -d "$B/a/b/c" ]
check_eq "directory link count" 3 "$(stat -c %h "$M/a/b")"
dd if=/dev/urandom of="$T/big" bs=1M count=8 status=none
cp "$T/big" "$M/a/b/c/big"
check "8 MiB file content" cmp -s "$T/big" "$M/a/b/c/big"
check_eq "size" 8388608 "$(stat -c %s "$M/a/b/c/big")"

# symlinks
ln -s ../file "$M/a/link"
check_eq "readlink" ../file "$(readlink "$M/a/link")"
check_eq "follow symlink" hello "$(cat "$M/a/link")"
ln -s "$(printf 'x%.0s' $(seq 1 1000))" "$M/longlink"
check_eq "1000-byte symlink target" 1000 "$(readlink "$M/longlink" | tr -d '\n' | wc -c)"
check_eq "dangling symlink is a symlink" "symbolic link" "$(stat -c %F "$M/longlink")"

# hard links: one inode, correct counts, survives unlink of the first name
ln "$M/file" "$M/a/hard"
check_eq "hard link shares the inode" "$(stat -c %i "$M/file")" "$(stat -c %i "$M/a/hard")"
check_eq "link count 2" 2 "$(stat -c %h "$M/file")"
check_eq "inode number is the backing one" "$(stat -c %i "$B/file")" "$(stat -c %i "$M/file")"
ln "$M/file" "$M/hard2"
check_eq "link count 3" 3 "$(stat -c %h "$M/a/hard")"
rm "$M/file"
check_eq "link count after unlink" 2 "$(stat -c %h "$M/a/hard")"
check_eq "content via remaining link" hello "$(cat "$M/hard2")"
echo more >>"$M/hard2"
check_eq "write via one link shows via the other" 2 "$(wc -l <"$M/a/hard")"

# O_APPEND from two writers
: >"$M/log"
for i in $(seq 1 50); do echo "a$i" >>"$M/log" & echo "b$i" >>"$M/log"; wait; done
check_eq "appends are never lost" 100 "$(wc -l <"$M/log")"

# truncate up and down
printf '0123456789' >"$M/t"
truncate -s 4 "$M/t"
check_eq "truncate down" 0123 "$(cat "$M/t")"
truncate -s 8192 "$M/t"
check_eq "truncate up size" 8192 "$(stat -c %s "$M/t")"
check_eq "truncate up reads zeros" "0123" "$(tr -d '\0' <"$M/t")"
truncate -s 0 "$M/t"
check_eq "truncate to zero" 0 "$(stat -c %s "$M/t")"
echo data >"$M/t"
python3 -c 'import os, sys; os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC))' "$M/t"
check_eq "open(O_RDONLY | O_TRUNC) truncates, as Linux does" 0 "$(stat -c %s "$M/t")"
: >"$M/empty"
check_eq "empty file" 0 "$(stat -c %s "$M/empty")"

# names: 255 bytes, non-ASCII, spaces and newlines
long=$(printf 'n%.0s' $(seq 1 255))
echo x >"$M/$long"
check "255-byte name" [ -f "$B/$long" ]
check "256-byte name refused" eval "! (echo x >'$M/${long}n') 2>/dev/null"
for n in 'été' '日本語ファイル' 'with space' $'new\nline' 'emoji-🙂' '-dash' '.hidden'; do
	echo "$n" >"$M/$n"
	check_eq "name '$n'" "$n" "$(cat "$M/$n")"
	check "name '$n' in the backing directory" [ -f "$B/$n" ]
done
check_eq "readdir lists names as the backing does" "$(ls -A "$B" | grep -v '^.drfs$')" "$(ls -A "$M")"

# readdir has . and .. and the right inode numbers
check "readdir has . and .." python3 -c "
import os,sys
names=[e for e in os.listdir('$M/a')]
fd=os.open('$M/a',os.O_RDONLY)
sys.exit(0)"
check_eq "ls -a shows . and .." ". .. b hard link" "$(ls -a "$M/a" | tr '\n' ' ' | sed 's/ $//')"
check_eq "readdir inode numbers" "$(ls -i "$B/a" | sort)" "$(ls -i "$M/a" | sort)"

# rmdir, unlink
rm -r "$M/a/b"
check "recursive removal" [ ! -e "$B/a/b" ]

# Removing files right after writing them, then syncfs: the kernel writes back
# the removed files' times, which must not turn into errors.
mkdir "$M/churn"
for i in $(seq 1 200); do echo "$i" >"$M/churn/$i"; done
rm -rf "$M/churn"
check "syncfs after removing freshly written files" sync -f "$M"
# An open file whose name is gone keeps working: write, fstat, futimens, ftruncate.
exec 7<>"$M/orphan"
rm "$M/orphan"
echo data >&7
check "futimens on an open unlinked file" touch -d 2001-01-01 /proc/self/fd/7
check_eq "fstat of an open unlinked file" 0 "$(stat -L -c %h /proc/self/fd/7)"
check "ftruncate on an open unlinked file" truncate -s 1 /proc/self/fd/7
exec 7>&-

# O_TRUNC right after a write: the truncation must not be skipped because the
# backing file does not hold the write yet (it is applied once durable).
mkdir "$M/trunc"
for i in $(seq 1 50); do printf zz >"$M/trunc/$i"; : >"$M/trunc/$i"; done
check_eq "O_TRUNC after a write: empty through the mount" 0 "$(cat "$M"/trunc/* | wc -c)"
umount_drfs "$M" && mount_drfs "$B" "$M"
check_eq "O_TRUNC after a write: empty after a remount" 0 "$(cat "$M"/trunc/* | wc -c)"
check_eq "O_TRUNC after a write: empty in the backing" 0 "$(cat "$B"/trunc/* | wc -c)"

# statfs agrees with the backing filesystem
check_eq "statfs block size and total" "$(stat -f -c '%S %b' "$B")" "$(stat -f -c '%S %b' "$M")"

check_eq "mount and backing trees agree" "$(tree_digest "$B")" "$(tree_digest "$M")"
umount_drfs "$M"
check_eq "after unmount the backing tree holds everything" 2 "$(wc -l <"$B/hard2")"
finish
