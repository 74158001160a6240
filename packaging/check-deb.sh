#!/bin/sh
# Checks the Debian package without installing it: its file list, that its files are the
# repository's, the unit (systemd-analyze verify, with the packaged binary and man page
# resolvable), and what its sysusers.d and tmpfiles.d entries create, all in a temporary root.
#
#   sh packaging/check-deb.sh [target/debian/claid-hotfolder_VERSION_ARCH.deb]
#
# Run it from anywhere, as root (systemd-tmpfiles chowns the folders it creates in the
# temporary root); the machine's own root is never written. Without an argument it checks
# the newest claid-hotfolder_*.deb under target/debian/. Needs dpkg-deb (dpkg), gzip, man
# (man-db) and systemd-analyze, systemd-sysusers and systemd-tmpfiles (systemd).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
pkg=claid-hotfolder

fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}

deb=${1:-}
if [ -z "$deb" ]; then
    # The newest package (ls -t sorts by modification time).
    deb=$(ls -t "$repo"/target/debian/"$pkg"_*.deb 2>/dev/null | head -n 1) || true
fi
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    fail "no package: build it first (README.md \"Install\") or name it"
fi

for tool in dpkg-deb gzip man systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (apt-get install dpkg gzip man-db systemd)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
echo "check-deb: $deb"

# 1. The file list: every file the package must hold, and each man page the main page names.
dpkg-deb -c "$deb" >"$work/listing"
awk '{ print $NF }' "$work/listing" >"$work/files"
has() {
    grep -qx "$1" "$work/files" || fail "the package lacks $1"
}
for path in \
    ./usr/bin/$pkg \
    ./usr/lib/systemd/system/$pkg.service \
    ./etc/$pkg/$pkg.yaml \
    ./usr/lib/sysusers.d/$pkg.conf \
    ./usr/lib/tmpfiles.d/$pkg.conf \
    ./usr/share/man/man1/$pkg.1.gz \
    ./usr/share/bash-completion/completions/$pkg \
    ./usr/share/zsh/vendor-completions/_$pkg \
    ./usr/share/fish/vendor_completions.d/$pkg.fish \
    ./usr/share/doc/$pkg/README.md \
    ./usr/share/doc/$pkg/ARCHITECTURE.md \
    ./usr/share/doc/$pkg/examples/$pkg.yaml \
    ./usr/share/doc/$pkg/copyright; do
    has "$path"
done
n_docs=0
for doc in "$repo"/docs/*.md; do
    has "./usr/share/doc/$pkg/docs/$(basename "$doc")"
    n_docs=$((n_docs + 1))
done
[ "$n_docs" -gt 0 ] || fail "no docs/*.md in $repo"
grep -q "^-rwxr-xr-x .* \./usr/bin/$pkg\$" "$work/listing" || fail "/usr/bin/$pkg is not mode 0755"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$work/control"
grep -qx "/etc/$pkg/$pkg.yaml" "$work/control/conffiles" 2>/dev/null || fail "/etc/$pkg/$pkg.yaml is not a conffile"
# The subcommand pages: every claid-hotfolder-NAME(1) the main page refers to.
gzip -dc "$root/usr/share/man/man1/$pkg.1.gz" >"$work/$pkg.1"
n_pages=0
for page in $(sed 's/\\-/-/g' "$work/$pkg.1" | grep -o "$pkg-[a-z0-9-]*(1)" | sed 's/(1)$//' | sort -u); do
    has "./usr/share/man/man1/$page.1.gz"
    n_pages=$((n_pages + 1))
done
[ "$n_pages" -gt 0 ] || fail "the man page names no subcommand page"
for completion in usr/share/bash-completion/completions/$pkg usr/share/zsh/vendor-completions/_$pkg \
    usr/share/fish/vendor_completions.d/$pkg.fish; do
    grep -q "$pkg" "$root/$completion" || fail "/$completion does not complete $pkg"
done
echo "check-deb: file list ok ($(wc -l <"$work/files") entries, $n_pages subcommand man pages, $n_docs docs)"

# 2. The packaged files are the repository's.
same() {
    cmp -s "$root/$1" "$repo/$2" || fail "/$1 differs from $2"
}
same usr/lib/systemd/system/$pkg.service systemd/$pkg.service
same etc/$pkg/$pkg.yaml config/$pkg.yaml
same usr/lib/sysusers.d/$pkg.conf packaging/$pkg.sysusers
same usr/lib/tmpfiles.d/$pkg.conf packaging/$pkg.tmpfile
same usr/share/doc/$pkg/README.md README.md
version=$(dpkg-deb -f "$deb" Version)
"$root/usr/bin/$pkg" --version | grep -qx "$pkg ${version%-*}" || fail "/usr/bin/$pkg --version is not $pkg ${version%-*}"
# The maintainer scripts create the user before the folders, and neither enable nor start the unit.
sysusers_line=$(grep -n "systemd-sysusers" "$work/control/postinst" | head -n 1 | cut -d: -f1)
tmpfiles_line=$(grep -n "systemd-tmpfiles --create" "$work/control/postinst" | head -n 1 | cut -d: -f1)
if [ -z "$sysusers_line" ] || [ -z "$tmpfiles_line" ] || [ "$sysusers_line" -ge "$tmpfiles_line" ]; then
    fail "postinst must run systemd-sysusers, then systemd-tmpfiles --create"
fi
if grep -q "deb-systemd-invoke start\|deb-systemd-invoke \$_dh_action" "$work/control/postinst"; then
    fail "postinst starts the unit before the API key is in place"
fi
echo "check-deb: files match the repository; postinst: sysusers, then tmpfiles; the unit is not started"

# 3. The unit as the package installs it: verify resolves ExecStart= to the packaged binary and
# the man: link to the packaged man page; file:// links must point at packaged files.
unit=$root/usr/lib/systemd/system/$pkg.service
for link in $(sed -n 's/^Documentation=//p' "$unit"); do
    case $link in
    file://*) [ -f "$root${link#file://}" ] || fail "Documentation=$link is not in the package" ;;
    esac
done
grep -q "^ExecStart=/usr/bin/$pkg " "$unit" || fail "ExecStart= does not run /usr/bin/$pkg"
mkdir "$work/unit"
sed "s|^ExecStart=/usr/bin/$pkg |ExecStart=$root/usr/bin/$pkg |" "$unit" >"$work/unit/$pkg.service"
if ! MANPATH=$root/usr/share/man systemd-analyze verify "$work/unit/$pkg.service" >"$work/verify" 2>&1 ||
    grep -q "$pkg" "$work/verify"; then
    cat "$work/verify" >&2
    fail "systemd-analyze verify"
fi
echo "check-deb: systemd-analyze verify ok"

# 4. sysusers.d and tmpfiles.d, applied to the temporary root only.
systemd-sysusers --root="$root" >/dev/null 2>&1 || fail "systemd-sysusers --root"
user_line=$(grep "^$pkg:" "$root/etc/passwd") || fail "sysusers created no user $pkg"
uid=$(echo "$user_line" | cut -d: -f3)
gid=$(echo "$user_line" | cut -d: -f4)
[ "$(echo "$user_line" | cut -d: -f6)" = /var/lib/$pkg ] || fail "the home of $pkg is not /var/lib/$pkg: $user_line"
[ "$(echo "$user_line" | cut -d: -f7)" = /usr/sbin/nologin ] || fail "$pkg can log in: $user_line"
[ "$uid" -lt 1000 ] || fail "$pkg is not a system user: $user_line"
grep -q "^$pkg:x:$gid:" "$root/etc/group" || fail "the group $pkg is not the user's primary group"
systemd-tmpfiles --root="$root" --create >"$work/tmpfiles" 2>&1 || {
    cat "$work/tmpfiles" >&2
    fail "systemd-tmpfiles --root --create"
}
expect_dir() { # path mode uid gid
    [ -d "$root$1" ] || fail "tmpfiles did not create $1"
    found=$(stat -c '%a %u %g' "$root$1")
    [ "$found" = "$2 $3 $4" ] || fail "$1 is mode/uid/gid $found, expected $2 $3 $4"
}
expect_dir /etc/$pkg 750 0 "$gid"
expect_dir /srv/claid 750 0 "$gid"
for folder in inbox outbox archive rejected; do
    expect_dir /srv/claid/$folder 2770 "$uid" "$gid"
    # Whoever creates a subfolder and a file in it (umask 022), the group can write both: the
    # daemon moves manifests out of folders people made.
    (umask 022 && mkdir "$root/srv/claid/$folder/sub" && : >"$root/srv/claid/$folder/sub/file")
    [ "$(stat -c '%A' "$root/srv/claid/$folder/sub")" = drwxrws--- ] ||
        fail "a subfolder of /srv/claid/$folder is $(stat -c '%A' "$root/srv/claid/$folder/sub"), not group-writable"
    [ "$(stat -c '%A' "$root/srv/claid/$folder/sub/file")" = -rw-rw---- ] ||
        fail "a file in /srv/claid/$folder is $(stat -c '%A' "$root/srv/claid/$folder/sub/file"), not group-writable"
done
echo "check-deb: sysusers (uid $uid, gid $gid) and tmpfiles (/etc/$pkg, /srv/claid/{inbox,outbox,archive,rejected}) ok"
echo "check-deb: ok"
