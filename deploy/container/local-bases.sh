#!/usr/bin/env bash
# Base images for deploy/Containerfile without a registry: where docker.io cannot be reached
# (this project's CI machine reaches Debian's archive and crates.io only), make local
# stand-ins for the two public base images, then build with
#   --build-arg RUST_IMAGE=localhost/rust:<rustc>-slim-bookworm
#   --build-arg RUNTIME_IMAGE=localhost/debian:bookworm-slim
#
#   deploy/container/local-bases.sh debian  localhost/debian:bookworm-slim: a minimal Debian
#                                           rootfs from debootstrap (--variant=minbase),
#                                           trimmed like the official slim image, imported
#   deploy/container/local-bases.sh rust    localhost/rust:<X.Y>-slim-bookworm: that base plus
#                                           gcc from Debian and this host's rustup toolchain
#                                           (bookworm's own rustc 1.63 is too old for the
#                                           workspace's rust-version 1.89)
#   deploy/container/local-bases.sh garage  localhost/garage:v<version>: this host's `garage`
#                                           binary (deploy/garage/run.sh install) at /garage,
#                                           like docker.io/dxflrs/garage, for compose.yaml
#   deploy/container/local-bases.sh s3s-fs  localhost/s3s-fs:<version>: the host's s3s-fs
#                                           (scripts/s3s-fs.sh install) at /s3s-fs, for
#                                           container/compose.s3s-fs.yaml
#   deploy/container/local-bases.sh all     debian and rust (the default)
# Cached: an image that exists is kept (OTTER_CONTAINER_REBUILD=1 makes them anew). Needs
# root, podman and debootstrap (apt-get install podman runc debootstrap). Prints the image
# names it made or found, one `NAME=image` line each, last.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/container/podman-env.sh

release=bookworm
mirror=${OTTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
debian_image=localhost/debian:$release-slim

fail() { echo "local-bases: FAILED: $*" >&2; exit 1; }

have_image() { [[ ${OTTER_CONTAINER_REBUILD:-0} != 1 ]] && podman image exists "$1"; }

make_debian() {
  if have_image "$debian_image"; then
    echo "RUNTIME_IMAGE=$debian_image"
    return 0
  fi
  command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
  local root=$otter_cache/rootfs-$release
  rm -rf "$root"
  mkdir -p "$otter_cache"
  echo "== debootstrap $release (minbase) into $root"
  debootstrap --variant=minbase "$release" "$root" "$mirror" >"$otter_cache/debootstrap.log" 2>&1 \
    || fail "debootstrap $release $mirror (log: $otter_cache/debootstrap.log)"
  # Trim it like debian:*-slim: no docs, man pages or translations, now or from later
  # apt-get installs; no package lists or caches in the image.
  cat >"$root/etc/dpkg/dpkg.cfg.d/otter-slim" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CONF
  cat >"$root/etc/apt/apt.conf.d/otter-slim" <<'CONF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
CONF
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<CONF
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CONF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/var/log/apt/* "$root/etc/resolv.conf" \
    "$root/etc/hostname"
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  echo "== podman import -> $debian_image"
  tar --numeric-owner --xattrs -C "$root" -c . \
    | podman import --quiet --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$debian_image" >/dev/null
  rm -rf "$root"
  echo "RUNTIME_IMAGE=$debian_image"
}

make_rust() {
  command -v rustc >/dev/null || fail "no rustc on PATH to copy into the builder image (rustup)"
  local sysroot version image ctx
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  image=localhost/rust:${version%.*}-slim-$release
  if have_image "$image"; then
    echo "RUST_IMAGE=$image"
    return 0
  fi
  make_debian >/dev/null
  podman_can_run "$debian_image" || fail "podman cannot run containers here: $podman_error"
  [[ -x $sysroot/bin/cargo ]] || fail "$sysroot/bin/cargo missing: the builder image needs cargo from the same toolchain"
  ctx=$otter_cache/rust-context
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain/bin"
  # Only what builds: cargo, rustc and their libraries (not the 800 MB of HTML docs).
  cp -p "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/"
  cp -a "$sysroot/lib" "$ctx/toolchain/lib"
  rm -rf "$ctx/toolchain/lib/rustlib/src" "$ctx/toolchain/lib/rustlib/rustc-src"
  echo "== podman build -> $image (rustc $version from $sysroot)"
  podman build --quiet --format docker --build-arg "BASE_IMAGE=$debian_image" \
    -f deploy/container/Containerfile.rust -t "$image" "$ctx" >/dev/null \
    || fail "podman build of $image"
  rm -rf "$ctx"
  echo "RUST_IMAGE=$image"
}

make_garage() {
  local bin version image ctx
  bin=$(command -v garage) || fail "no garage on PATH (deploy/garage/run.sh install builds it, about 11 minutes)"
  version=$("$bin" --version | awk '{print $2}')
  version=${version#cargo:}
  image=localhost/garage:v$version
  if have_image "$image"; then
    echo "GARAGE_IMAGE=$image"
    return 0
  fi
  make_debian >/dev/null
  ctx=$otter_cache/garage-context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -p "$bin" "$ctx/garage"
  # Garage links glibc only (ldd): the Debian base is enough. Same path and config file as
  # the official image (/garage, /etc/garage.toml).
  printf 'FROM %s\nCOPY garage /garage\nCMD ["/garage", "server"]\n' "$debian_image" >"$ctx/Containerfile"
  echo "== podman build -> $image (garage $version from $bin)"
  podman build --quiet --format docker -t "$image" "$ctx" >/dev/null || fail "podman build of $image"
  rm -rf "$ctx"
  echo "GARAGE_IMAGE=$image"
}

make_s3s_fs() {
  local bin version image ctx
  bin=$(command -v s3s-fs) || fail "no s3s-fs on PATH (scripts/s3s-fs.sh install, about 80 s)"
  version=$("$bin" --version | awk '{print $2}')
  image=localhost/s3s-fs:$version
  if have_image "$image"; then
    echo "S3S_FS_IMAGE=$image"
    return 0
  fi
  make_debian >/dev/null
  ctx=$otter_cache/s3s-fs-context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -p "$bin" "$ctx/s3s-fs"
  printf 'FROM %s\nCOPY s3s-fs /s3s-fs\n' "$debian_image" >"$ctx/Containerfile"
  echo "== podman build -> $image (s3s-fs $version from $bin)"
  podman build --quiet --format docker -t "$image" "$ctx" >/dev/null || fail "podman build of $image"
  rm -rf "$ctx"
  echo "S3S_FS_IMAGE=$image"
}

podman_usable || fail "$podman_error"
case ${1:-all} in
  debian) make_debian ;;
  rust) make_rust ;;
  garage) make_garage ;;
  s3s-fs) make_s3s_fs ;;
  all) make_debian; make_rust ;;
  *) fail "unknown argument '$1' (debian, rust, garage, s3s-fs or all)" ;;
esac
