"""Test certificates made with the openssl CLI: a CA, server and client certificates, a client
certificate from another CA, and an expired client certificate."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

CA_CONFIG = """
[ca]
default_ca = test
[test]
database = db/index.txt
new_certs_dir = db
serial = db/serial
default_md = sha256
policy = any
copy_extensions = copy
[any]
commonName = supplied
"""


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "rogue"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca, san in (("server", "ca", "IP:127.0.0.1,DNS:localhost"),
                          ("conductor", "ca", "DNS:conductor.nova"),
                          ("intruder", "rogue", "DNS:conductor.nova")):
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    # An expired certificate from the trusted CA.
    (d / "db").mkdir()
    (d / "db" / "index.txt").write_text("")
    (d / "db" / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(CA_CONFIG)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=expired", "-keyout", "expired.key",
        "-out", "expired.csr")
    run("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in",
        "expired.csr", "-out", "expired.pem", "-startdate", "20200101000000Z",
        "-enddate", "20200102000000Z")
    return d
