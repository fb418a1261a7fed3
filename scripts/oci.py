#!/usr/bin/env python3
"""OCI image layouts of the filter, without Docker: `make oci`.

    scripts/oci.py build [--wasm FILE] [--out DIR]   # default: the release .wasm, target/oci
    scripts/oci.py check DIR                         # checks one layout (used by check-oci.sh)
    scripts/oci.py extract DIR OUT                   # plugin.wasm out of a `skopeo copy ... dir:` copy
    scripts/oci.py selftest TMPDIR                   # `check` refuses broken layouts

`build` writes two OCI image layouts (image-spec 1.0: oci-layout, index.json, blobs/sha256/),
in the two layouts that Istio's and Envoy Gateway's Wasm image fetchers accept:

  DIR/compat/    the "compat" variant: one layer, application/vnd.oci.image.layer.v1.tar+gzip,
                 holding plugin.wasm; an ordinary image config (os wasip1, architecture wasm);
                 the manifest annotation module.wasm.image/variant=compat.
  DIR/artifact/  the "oci" variant: config application/vnd.module.wasm.config.v1+json and exactly
                 two layers, the raw module (application/vnd.module.wasm.content.layer.v1+wasm)
                 and the runtime configuration (application/vnd.module.wasm.config.v1+json).

Both are reproducible: the same .wasm (and the same version and options) gives the same bytes,
so the same manifest digest, which is what a WasmPlugin's or EnvoyExtensionPolicy's `sha256`
pins. The tar has mtime 0, uid/gid 0, no user names; gzip has mtime 0 and no file name; JSON has
sorted keys and no spaces. Nothing time- or host-dependent goes in unless asked for:
OCI_SOURCE and OCI_REVISION (environment) add org.opencontainers.image.source / .revision.

The index tags each manifest with the crate version (org.opencontainers.image.ref.name), so
`skopeo copy oci:target/oci/compat:0.1.0 docker://REGISTRY/okta-dcr-auth:0.1.0` pushes it.
Python 3 standard library only.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
PLUGIN = "plugin.wasm"
VARIANTS = ("compat", "artifact")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/okta_dcr_auth.wasm")
DEFAULT_OUT = os.path.join(ROOT, "target/oci")


def die(msg):
    print(f"oci: {msg}", file=sys.stderr)
    sys.exit(1)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def package_fields():
    """name, version, description, license of the [package] table of Cargo.toml (the version
    from [workspace.package] when the package inherits it)."""
    path = os.path.join(ROOT, "Cargo.toml")
    try:
        import tomllib  # Python 3.11+

        with open(path, "rb") as f:
            doc = tomllib.load(f)
        pkg = dict(doc["package"])
        # `version.workspace = true`: the workspace's version.
        if isinstance(pkg.get("version"), dict):
            pkg["version"] = doc.get("workspace", {}).get("package", {}).get("version")
    except ModuleNotFoundError:  # older Python: the few plain `key = "value"` lines needed
        pkg = {}
        with open(path, encoding="utf-8") as f:
            section = None
            for line in f:
                m = re.match(r"^\[([^\]]+)\]", line)
                if m:
                    section = m.group(1).strip()
                elif section in ("package", "workspace.package"):
                    m = re.match(r'^(\w+)\s*=\s*"([^"]*)"', line)
                    if m:
                        pkg[m.group(1)] = m.group(2)
    for key in ("name", "version"):
        if not isinstance(pkg.get(key), str) or not pkg[key]:
            die(f"Cargo.toml: [package] has no {key}")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", pkg["version"]):
        die(f"Cargo.toml: version {pkg['version']!r} is not a valid OCI tag")
    return pkg


def annotations(pkg, extra):
    out = {
        "org.opencontainers.image.title": pkg["name"],
        "org.opencontainers.image.version": pkg["version"],
        "org.opencontainers.image.description": pkg.get("description", ""),
        "org.opencontainers.image.licenses": pkg.get("license", ""),
    }
    for env, key in (("OCI_SOURCE", "source"), ("OCI_REVISION", "revision")):
        value = os.environ.get(env, "").strip()
        if value:
            out[f"org.opencontainers.image.{key}"] = value
    out.update(extra)
    return {k: v for k, v in out.items() if v}


def plugin_tar_gz(wasm):
    """A deterministic tar.gz holding plugin.wasm; returns (gzip bytes, tar bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN)
        info.size = len(wasm)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(tar_bytes)
    return packed.getvalue(), tar_bytes


def descriptor(media_type, data, annotations=None):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def write_layout(out, blobs, manifest, tag):
    """Writes an OCI image layout at `out` (replacing what was there); returns the manifest
    descriptor."""
    manifest_bytes = canonical(manifest)
    blobs = list(blobs) + [manifest_bytes]
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    for blob in blobs:
        with open(os.path.join(tmp, "blobs", "sha256", hashlib.sha256(blob).hexdigest()), "wb") as f:
            f.write(blob)
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    desc = descriptor(MANIFEST, manifest_bytes, {"org.opencontainers.image.ref.name": tag})
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc]}))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    return desc


def build(wasm_path, out_dir):
    try:
        with open(wasm_path, "rb") as f:
            wasm = f.read()
    except OSError as e:
        die(f"{wasm_path}: {e.strerror}: build it first (`make wasm`)")
    if wasm[:4] != b"\0asm":
        die(f"{wasm_path} is not a WebAssembly module")
    pkg = package_fields()
    tag = pkg["version"]
    os.makedirs(out_dir, exist_ok=True)
    results = {}

    # compat: one tar+gzip layer with plugin.wasm, an ordinary image config.
    layer, tar_bytes = plugin_tar_gz(wasm)
    config = canonical(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {"Labels": annotations(pkg, {})},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(IMAGE_CONFIG, config),
        "layers": [descriptor(TAR_GZIP, layer)],
        "annotations": annotations(pkg, {"module.wasm.image/variant": "compat"}),
    }
    results["compat"] = write_layout(os.path.join(out_dir, "compat"), [config, layer], manifest, tag)

    # artifact: the raw module and the runtime configuration, two layers.
    runtime = canonical(
        {
            "type": "envoy_proxy",
            "abiVersions": ["proxy_abi_version_0_2_1"],
            "config": {"rootIds": [""]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(WASM_CONFIG, runtime),
        "layers": [
            descriptor(WASM_LAYER, wasm, {"org.opencontainers.image.title": PLUGIN}),
            descriptor(WASM_CONFIG, runtime, {"org.opencontainers.image.title": "runtime-config.json"}),
        ],
        "annotations": annotations(pkg, {}),
    }
    results["artifact"] = write_layout(os.path.join(out_dir, "artifact"), [wasm, runtime], manifest, tag)

    rel = os.path.relpath(out_dir, os.getcwd())
    print(f"oci: {pkg['name']} {tag}, module sha256 {hashlib.sha256(wasm).hexdigest()} ({len(wasm)} bytes)")
    for variant in VARIANTS:
        print(f"oci:   {rel}/{variant}  manifest {results[variant]['digest']}")
    print(f"oci: push: skopeo copy --preserve-digests oci:{rel}/compat:{tag} docker://REGISTRY/{pkg['name']}:{tag}")
    print(f"oci: then WasmPlugin url: oci://REGISTRY/{pkg['name']}:{tag}, sha256: {results['compat']['digest'][7:]}")


# ---- checks: what Istio's and Envoy Gateway's image fetchers require ---------------------------


class Bad(Exception):
    pass


def read_json(path, what):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as e:
        raise Bad(f"{what}: {e}")


def blob_reader(layout):
    def read(desc):
        digest = desc.get("digest", "")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise Bad(f"bad digest {digest!r}")
        path = os.path.join(layout, "blobs", "sha256", digest[7:])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise Bad(f"blob {digest}: {e.strerror}")
        if sha256(data) != digest or len(data) != desc.get("size"):
            raise Bad(f"blob {digest}: content does not match its descriptor")
        return data

    return read


def wasm_from_manifest(manifest, read):
    """The module inside an image, the way Istio's and Envoy Gateway's fetchers find it
    (pkg/wasm/imagefetcher.go): a compat image (one tar+gzip layer holding plugin.wasm) or an
    oci-variant one (exactly two layers, one of them the raw module). Returns (variant, bytes)."""
    layers = manifest.get("layers") or []
    if len(layers) == 1 and layers[0].get("mediaType") == TAR_GZIP:
        data = read(layers[0])
        try:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
                for member in tar:
                    if os.path.basename(member.name) == PLUGIN and member.isfile():
                        return "compat", tar.extractfile(member).read()
        except (OSError, EOFError, tarfile.TarError) as e:
            raise Bad(f"the layer is not a tar+gzip: {e}")
        raise Bad(f"{PLUGIN} not found in the layer")
    if len(layers) != 2:
        raise Bad(f"number of layers must be 1 (compat) or 2 (oci variant), got {len(layers)}")
    wasm = [l for l in layers if l.get("mediaType") == WASM_LAYER]
    if len(wasm) != 1:
        raise Bad(f"no layer of type {WASM_LAYER}")
    return "artifact", read(wasm[0])


def check(layout, expect_wasm=None):
    if read_json(os.path.join(layout, "oci-layout"), "oci-layout").get("imageLayoutVersion") != "1.0.0":
        raise Bad("oci-layout: imageLayoutVersion is not 1.0.0")
    index = read_json(os.path.join(layout, "index.json"), "index.json")
    manifests = index.get("manifests") or []
    if len(manifests) != 1 or manifests[0].get("mediaType") != MANIFEST:
        raise Bad("index.json must name exactly one OCI image manifest")
    read = blob_reader(layout)
    manifest = json.loads(read(manifests[0]))
    pkg = package_fields()
    notes = manifest.get("annotations") or {}
    if notes.get("org.opencontainers.image.version") != pkg["version"]:
        raise Bad(f"annotation org.opencontainers.image.version is not {pkg['version']}")
    read(manifest.get("config") or {})
    variant, wasm = wasm_from_manifest(manifest, read)
    if variant == "compat" and notes.get("module.wasm.image/variant") != "compat":
        raise Bad("a compat image needs the annotation module.wasm.image/variant=compat")
    if variant == "artifact" and manifest["config"].get("mediaType") != WASM_CONFIG:
        raise Bad(f"the oci variant's config must be {WASM_CONFIG}")
    if expect_wasm is not None and wasm != expect_wasm:
        raise Bad(f"the module inside differs from {DEFAULT_WASM}")
    return variant, manifests[0]["digest"], wasm


def extract(copy_dir, out):
    """plugin.wasm out of a `skopeo copy ... dir:COPY_DIR` (manifest.json and blobs named by hex)."""
    with open(os.path.join(copy_dir, "manifest.json"), "rb") as f:
        manifest_bytes = f.read()
    manifest = json.loads(manifest_bytes)

    def read(desc):
        digest = desc.get("digest", "")
        with open(os.path.join(copy_dir, digest.split(":", 1)[-1]), "rb") as f:
            data = f.read()
        if sha256(data) != digest:
            raise Bad(f"blob {digest}: content does not match its digest")
        return data

    variant, wasm = wasm_from_manifest(manifest, read)
    with open(out, "wb") as f:
        f.write(wasm)
    print(f"{variant} {sha256(manifest_bytes)}")


def selftest(out_dir):
    """The checks refuse what the fetchers refuse: each broken layout must fail `check`."""
    with open(DEFAULT_WASM, "rb") as f:
        wasm = f.read()

    def relayout(src, name, edit):
        """A copy of layout `src` whose manifest `edit` changed (and blobs it adds)."""
        dst = os.path.join(out_dir, name)
        shutil.copytree(src, dst)
        index = read_json(os.path.join(dst, "index.json"), "index.json")
        manifest = json.loads(blob_reader(dst)(index["manifests"][0]))
        for blob in edit(manifest):
            with open(os.path.join(dst, "blobs", "sha256", hashlib.sha256(blob).hexdigest()), "wb") as f:
                f.write(blob)
        data = canonical(manifest)
        with open(os.path.join(dst, "blobs", "sha256", hashlib.sha256(data).hexdigest()), "wb") as f:
            f.write(data)
        index["manifests"][0].update(digest=sha256(data), size=len(data))
        with open(os.path.join(dst, "index.json"), "wb") as f:
            f.write(canonical(index))
        return dst

    def one_layer(m):  # the push that fails in Istio: "number of layers must be 2 but got 1"
        m["layers"] = m["layers"][:1]
        return []

    def renamed(m):  # a compat layer without plugin.wasm
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo("okta_dcr_auth.wasm")
            info.size = len(wasm)
            tar.addfile(info, io.BytesIO(wasm))
        layer = gzip.compress(raw.getvalue(), mtime=0)
        m["layers"] = [descriptor(TAR_GZIP, layer)]
        return [layer]

    def other_module(m):  # a module that is not this build
        other = wasm[:-1] + bytes([wasm[-1] ^ 1])
        m["layers"][0] = descriptor(WASM_LAYER, other)
        return [other]

    def no_variant(m):
        del m["annotations"]["module.wasm.image/variant"]
        return []

    good = os.path.join(out_dir, "good")
    with contextlib.redirect_stdout(io.StringIO()):
        build(DEFAULT_WASM, good)
    cases = [
        ("artifact with one layer", relayout(os.path.join(good, "artifact"), "one-layer", one_layer)),
        ("compat without plugin.wasm", relayout(os.path.join(good, "compat"), "renamed", renamed)),
        ("another module", relayout(os.path.join(good, "artifact"), "other", other_module)),
        ("compat without its annotation", relayout(os.path.join(good, "compat"), "no-variant", no_variant)),
    ]
    failed = False
    for what, layout in cases:
        try:
            check(layout, wasm)
            print(f"  FAIL  the check accepts a broken layout: {what}")
            failed = True
        except Bad as e:
            print(f"  ok    refused: {what} ({e})")
    if failed:
        sys.exit(1)


def main(argv):
    if len(argv) >= 1 and argv[0] == "build":
        args = argv[1:]
        wasm, out = DEFAULT_WASM, DEFAULT_OUT
        while args:
            if args[0] == "--wasm" and len(args) > 1:
                wasm, args = args[1], args[2:]
            elif args[0] == "--out" and len(args) > 1:
                out, args = args[1], args[2:]
            else:
                die(f"unknown argument {args[0]!r}")
        build(wasm, out)
    elif len(argv) == 2 and argv[0] == "check":
        with open(DEFAULT_WASM, "rb") as f:
            expect = f.read()
        try:
            variant, digest, _ = check(argv[1], expect)
        except Bad as e:
            die(f"{argv[1]}: {e}")
        print(f"{variant} {digest}")
    elif len(argv) == 2 and argv[0] == "selftest":
        selftest(argv[1])
    elif len(argv) == 3 and argv[0] == "extract":
        try:
            extract(argv[1], argv[2])
        except (Bad, OSError, ValueError) as e:
            die(f"{argv[1]}: {e}")
    else:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
