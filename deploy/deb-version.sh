#!/bin/sh
# deb-version.sh DESCRIBE: the Debian version for a `git describe --tags
# --always --dirty` string. vX.Y.Z -> X.Y.Z; vX.Y.Z-N-gHASH ->
# X.Y.Z+gitN.gHASH; no tag (HASH) -> 0~gitN.HASH, N the commit count, so
# that any release outranks it; -dirty -> .dirty.
set -eu
d=${1:-dev}
case "$d" in
v[0-9]* | [0-9]*.[0-9]*) # a tag; a bare hash has no dot, even one starting with a digit
	echo "${d#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)/+git\1.g\2/; s/-dirty$/.dirty/'
	;;
*)
	n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
	echo "0~git$n.$d" | sed -E 's/-dirty$/.dirty/'
	;;
esac
