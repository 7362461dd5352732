#!/usr/bin/env bash
# A stock Debian Linux guest for the Linux tests, downloaded once into build/linux/:
#   vmlinuz           the kernel of the current linux-image-*-amd64 package (KASLR, PTI)
#   initramfs.cpio.gz busybox (busybox-static) with an /init that starts a few sleepers,
#                     prints /proc facts and a ready line, then reads commands on ttyS0
#   modules/VERSION/  the package's module index files (modules.*); the package itself
#                     stays in debs/ so a test can extract one module from it (issue 13)
#   release           the kernel release (6.1.0-NN-amd64), written last
# The package is found through linux-image-amd64's dependency, so a Debian point release
# that moves the ABI number needs nothing changed here. Nothing is installed: the packages
# are only downloaded (apt-get download) and unpacked in build/linux/.
# Idempotent and quiet when everything is present; KINSPECT_LINUX_DIR moves the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${KINSPECT_LINUX_DIR:-build/linux}
init_src=scripts/linux-init.sh
if [ -s "$out/release" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ] \
    && [ "$out/initramfs.cpio.gz" -nt "$init_src" ]; then
    exit 0
fi
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)

image_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
package=$(image_package || true)
if [ -z "$package" ]; then
    echo "fetch-linux: updating apt's package lists to find linux-image-amd64" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    package=$(image_package || true)
fi
[ -n "$package" ] || { echo "fetch-linux: apt knows no linux-image-amd64 (is this Debian?)" >&2; exit 1; }
release=${package#linux-image-}

download() {  # download PACKAGE: the .deb's path in debs/, fetched once
    local deb
    deb=$(ls "$out/debs/$1"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        echo "fetch-linux: downloading $1" >&2
        # as root, apt's sandbox user could not write here: download as root, quietly
        local sandbox=()
        [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
        (cd "$out/debs" && apt-get download -qq "${sandbox[@]}" "$1" >/dev/null)
        deb=$(ls "$out/debs/$1"_*.deb | head -n1)
    fi
    echo "$deb"
}

kernel_deb=$(download "$package")
busybox_deb=$(download busybox-static)

work=$(mktemp -d "$out/.unpack.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb --fsys-tarfile "$kernel_deb" \
    | tar -x -C "$work" --wildcards "./boot/vmlinuz-*" "./lib/modules/*/modules.*"
dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work" ./bin/busybox
mv -f "$work/boot/vmlinuz-$release" "$out/vmlinuz"
rm -rf "$out/modules/$release"
mkdir -p "$out/modules"
mv "$work/lib/modules/$release" "$out/modules/$release"
python3 scripts/mkinitramfs.py --busybox "$work/bin/busybox" --init "$init_src" \
    --output "$out/initramfs.cpio.gz"
echo "$release" > "$out/release"
echo "fetch-linux: $release in $out" >&2
