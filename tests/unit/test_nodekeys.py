"""The UI host's keys to its GPU nodes (nodekeys): read only from root's private files, never
through a link, matched to webui.ollama_urls by host, kept while nothing changed."""

import json
import os
import ssl

import pytest

from localaid import nodekeys

TOKEN_A = "a" * 20 + "_-" + "Z9" * 10
TOKEN_B = "b" * 43


def write(tls, name, token=TOKEN_A, names=(), mode=0o600, **extra):
    nodes = tls / "nodes"
    nodes.mkdir(mode=0o700, exist_ok=True)
    path = nodes / f"{name}.json"
    path.write_text(json.dumps({"name": name, "names": list(names), "token": token, "port": 11443,
                                "not_after": 2e9, "fingerprint": "AB:CD", **extra}))
    os.chmod(path, mode)
    return path


def test_a_node_file_gives_its_token_to_the_urls_that_name_it(tmp_path):
    write(tmp_path, "gpu-a", names=["gpu-a", "192.168.1.21", "GPU-A.lan", "fe80:0:0::1"])
    write(tmp_path, "gpu-b", TOKEN_B, names=["gpu-b"])
    keys = nodekeys.load(str(tmp_path))
    assert sorted(keys) == ["gpu-a", "gpu-b"] and keys.errors == ()
    assert nodekeys.token_for("https://gpu-a:11443", keys) == TOKEN_A
    assert nodekeys.token_for("https://192.168.1.21:11443/", keys) == TOKEN_A
    assert nodekeys.token_for("https://gpu-a.LAN:11443", keys) == TOKEN_A  # names without case
    assert nodekeys.token_for("https://[fe80::1]:11443", keys) == TOKEN_A  # addresses canonical
    assert nodekeys.token_for("https://gpu-b:11443", keys) == TOKEN_B
    assert nodekeys.token_for("http://gpu-a:11434", keys) is None  # never over plain HTTP
    assert nodekeys.token_for("https://gpu-c:11443", keys) is None
    assert nodekeys.auth_headers("https://gpu-b:11443", keys) == {"Authorization": f"Bearer {TOKEN_B}"}
    assert nodekeys.auth_headers("https://gpu-c:11443", keys) is None


def test_the_token_is_never_in_a_repr(tmp_path):
    write(tmp_path, "gpu-a", names=["gpu-a"])
    keys = nodekeys.load(str(tmp_path))
    assert TOKEN_A not in repr(keys) and TOKEN_A not in str(keys["gpu-a"])


def test_no_nodes_directory_is_no_keys(tmp_path):
    keys = nodekeys.load(str(tmp_path))
    assert keys == {} and keys.errors == ()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_file_others_can_read_is_skipped_with_words(tmp_path, mode):
    write(tmp_path, "gpu-a", names=["gpu-a"], mode=mode)
    write(tmp_path, "gpu-b", TOKEN_B, names=["gpu-b"])
    keys = nodekeys.load(str(tmp_path))
    assert list(keys) == ["gpu-b"]
    assert len(keys.errors) == 1 and "gpu-a.json is open to others" in keys.errors[0] and "chmod 600" in keys.errors[0]
    assert TOKEN_A not in keys.errors[0]


def test_a_file_not_roots_is_skipped(tmp_path):
    path = write(tmp_path, "gpu-a", names=["gpu-a"])
    os.chown(path, 1000, 1000)
    keys = nodekeys.load(str(tmp_path))
    assert keys == {} and "not root's (owner uid 1000)" in keys.errors[0]


def test_a_link_is_never_followed(tmp_path):
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps({"name": "gpu-x", "names": [], "token": TOKEN_B}))
    os.chmod(secret, 0o600)
    (tmp_path / "nodes").mkdir(mode=0o700)
    os.symlink(secret, tmp_path / "nodes" / "gpu-x.json")
    keys = nodekeys.load(str(tmp_path))
    assert keys == {} and "symbolic link" in keys.errors[0]


def test_a_linked_or_open_nodes_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    write(real, "gpu-a", names=["gpu-a"])
    tls = tmp_path / "tls"
    tls.mkdir()
    os.symlink(real / "nodes", tls / "nodes")
    keys = nodekeys.load(str(tls))
    assert keys == {} and "symbolic link" in keys.errors[0]
    os.chmod(real / "nodes", 0o777)
    keys = nodekeys.load(str(real))
    assert keys == {} and "changed by others" in keys.errors[0]


@pytest.mark.parametrize("doc, words", [
    ("{", "not JSON"), ('{"names": [], "token": "%s"}' % TOKEN_A, 'no "name"'),
    ('{"name": "n", "names": [], "token": "short"}', '"token"'),
    ('{"name": "n", "names": [], "token": "has space has space has"}', '"token"'),
    ('{"name": "n", "names": "n", "token": "%s"}' % TOKEN_A, '"names"')])
def test_a_malformed_file_is_skipped_with_its_name(tmp_path, doc, words):
    (tmp_path / "nodes").mkdir(mode=0o700)
    path = tmp_path / "nodes" / "n.json"
    path.write_text(doc)
    os.chmod(path, 0o600)
    keys = nodekeys.load(str(tmp_path))
    assert keys == {} and str(path) in keys.errors[0] and words in keys.errors[0]


def test_read_again_only_when_the_directory_changed_or_a_file_was_refused(tmp_path):
    write(tmp_path, "gpu-a", names=["gpu-a"])
    first = nodekeys.load(str(tmp_path))
    assert nodekeys.load(str(tmp_path)) is first  # nothing changed: the same answer, no read
    write(tmp_path, "gpu-b", TOKEN_B, names=["gpu-b"])  # a node added
    assert sorted(nodekeys.load(str(tmp_path))) == ["gpu-a", "gpu-b"]
    path = write(tmp_path, "gpu-c", names=["gpu-c"], mode=0o644)
    assert "gpu-c" not in nodekeys.load(str(tmp_path))
    os.chmod(path, 0o600)  # fixed in place: the directory did not change, the refusal is read again
    assert "gpu-c" in nodekeys.load(str(tmp_path))


def test_a_file_rewritten_in_place_is_read_again(tmp_path):
    path = write(tmp_path, "gpu-a", names=["gpu-a"])
    assert nodekeys.token_for("https://gpu-a:11443", nodekeys.load(str(tmp_path))) == TOKEN_A
    with open(path, "r+") as f:  # the same inode, the directory untouched
        doc = json.load(f)
        f.seek(0)
        f.write(json.dumps({**doc, "token": TOKEN_B}))
        f.truncate()
    os.utime(path, ns=(1, 1))  # even with an old time set back: size and ctime changed
    assert nodekeys.token_for("https://gpu-a:11443", nodekeys.load(str(tmp_path))) == TOKEN_B


def test_a_re_added_nodes_new_token_is_seen(tmp_path):
    write(tmp_path, "gpu-a", names=["gpu-a"])
    assert nodekeys.token_for("https://gpu-a:11443", nodekeys.load(str(tmp_path))) == TOKEN_A
    tmp = tmp_path / "nodes" / ".gpu-a.tmp"  # as a writer does: a new file renamed over the old
    tmp.write_text(json.dumps({"name": "gpu-a", "names": ["gpu-a"], "token": TOKEN_B}))
    os.chmod(tmp, 0o600)
    os.rename(tmp, tmp_path / "nodes" / "gpu-a.json")
    assert nodekeys.token_for("https://gpu-a:11443", nodekeys.load(str(tmp_path))) == TOKEN_B


def test_the_tls_context_trusts_the_site_ca_beside_the_systems(tmp_path):
    from localaid.provision.https import certs
    ca = tmp_path / "ca.crt"
    none = nodekeys.tls_context(str(ca))  # no site CA yet: the system's CAs only
    assert none.verify_mode == ssl.CERT_REQUIRED and none.check_hostname
    base = len(none.get_ca_certs())
    certs.ensure_ca(str(tmp_path), "localaid test CA")
    ctx = nodekeys.tls_context(str(ca))
    assert ctx is not none and len(ctx.get_ca_certs()) == base + 1
    assert nodekeys.tls_context(str(ca)) is ctx  # unchanged CA: the same context
