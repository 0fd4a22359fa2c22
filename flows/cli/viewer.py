"""``deconvseg viewer install`` and ``deconvseg viewer nginx-config``: OHIF beside the PACS.

The viewer is fetched with ``npm pack`` at install time only; nothing is downloaded when it runs.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors

viewer_app = typer.Typer(help="Clinician review in OHIF, served by nginx beside the PACS.", no_args_is_help=True)
app.add_typer(viewer_app, name="viewer")


@viewer_app.command("install")
@one_line_errors
def install(
    folder: Path = typer.Option(Path("ohif"), "--dir", help="Folder for the viewer (index.html, app-config.js, ...)."),
    dicomweb_root: str = typer.Option("/dicom-web", "--dicomweb-root", help="DICOMweb root on the viewer's origin."),
) -> None:
    """Fetch the pinned OHIF build, unpack it into DIR and write its app-config.js for our DICOMweb root."""
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.files import atomic_folder
    from deconvseg.pipeline.viewer import OHIF_PACKAGE, OHIF_VERSION, app_config_js

    config = app_config_js(dicomweb_root)  # refuse a bad root before downloading 50 MB
    npm = shutil.which("npm")
    if npm is None:
        raise InputError("npm", "is not installed", "install Node.js and npm (Debian: apt-get install nodejs npm)")
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    with tempfile.TemporaryDirectory(prefix="deconvseg-ohif-") as tmp:
        done = subprocess.run(
            [npm, "pack", spec, "--loglevel", "error", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=900,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise InputError(
                spec,
                f"npm pack failed ({_npm_reason(done.stderr)})",
                "check that the npm registry is reachable (npm config get registry) or set a mirror",
            )
        with tarfile.open(tarballs[0]) as archive, atomic_folder(folder) as staging:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            if not any(m.name == "package/dist/index.html" for m in members):
                raise InputError(tarballs[0], "holds no dist/index.html", f"the pinned {spec} should carry its build")
            for member in members:
                member.name = member.name.removeprefix("package/dist/")
            archive.extractall(staging, members=members, filter="data")
            (staging / "app-config.js").write_text(config)
    files = sum(m.isfile() for m in members)
    typer.echo(f"fetched {spec} with npm pack; unpacked its dist/ into {folder}/ ({files} files)")
    typer.echo(
        f"wrote {folder}/app-config.js: DICOMweb at {dicomweb_root} on this origin, no tour, "
        "SEG/RTSTRUCT shown without a prompt, the investigational-use notice shown once a year"
    )
    typer.echo(f"next: deconvseg viewer nginx-config --orthanc URL --listen HOST:PORT --viewer-dir {folder}")


@viewer_app.command("nginx-config")
@one_line_errors
def nginx_config(
    orthanc: str = typer.Option(
        ..., "--orthanc", help="The PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."
    ),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT nginx listens on."),
    viewer_dir: Path = typer.Option(Path("ohif"), "--viewer-dir", help="The folder 'viewer install' wrote."),
    out: Path = typer.Option(None, "--out", help="Write the server block here (default: print it)."),
    dicomweb_root: str = typer.Option("/dicom-web", "--dicomweb-root", help="Same as given to 'viewer install'."),
    orthanc_user: str = typer.Option(None, "--orthanc-user", help="nginx logs in to the PACS as this user."),
    orthanc_password_file: Path = typer.Option(None, "--orthanc-password-file", help="File with that user's password."),
    htpasswd: Path = typer.Option(None, "--htpasswd", help="nginx checks viewers against this htpasswd file."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate: HTTPS on --listen (with --tls-key)."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
) -> None:
    """Write an nginx server block: OHIF at /, the DICOMweb root proxied to the PACS.

    Without --orthanc-user the browser's credentials pass through to the PACS.
    """
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.files import atomic_file
    from deconvseg.pipeline.viewer import nginx_server_block

    if not (viewer_dir / "index.html").is_file():
        raise InputError(viewer_dir, "holds no index.html", "run 'deconvseg viewer install --dir DIR' first")
    authorization = None
    if orthanc_user is not None:
        if orthanc_password_file is None or not orthanc_password_file.is_file():
            raise InputError(
                orthanc_password_file or "--orthanc-password-file",
                "no password file",
                "pass --orthanc-password-file FILE with the PACS user's password",
            )
        password = orthanc_password_file.read_text().strip()
        authorization = "Basic " + base64.b64encode(f"{orthanc_user}:{password}".encode()).decode()
    if htpasswd is not None and not htpasswd.is_file():
        raise InputError(htpasswd, "does not exist", "create it with 'htpasswd -c FILE USER' (apache2-utils)")
    tls = None
    if tls_cert is not None or tls_key is not None:
        for given in (tls_cert, tls_key):
            if given is None or not given.is_file():
                raise InputError(
                    given or "--tls-cert/--tls-key",
                    "TLS needs both files",
                    "pass --tls-cert CERT.pem --tls-key KEY.pem (the hospital's certificate)",
                )
        tls = (str(tls_cert.resolve()), str(tls_key.resolve()))
    text = nginx_server_block(
        orthanc,
        listen,
        str(viewer_dir.resolve()),
        dicomweb_root=dicomweb_root,
        upstream_authorization=authorization,
        htpasswd=str(htpasswd.resolve()) if htpasswd else None,
        tls=tls,
    )
    if out is None:
        typer.echo(text, nl=False)
        return
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    if authorization:
        out.chmod(0o600)  # it holds the PACS password (base64)
    scheme = "https" if tls else "http"
    typer.echo(f"wrote {out}: OHIF from {viewer_dir.resolve()} at {scheme}://{listen}/, {dicomweb_root}/ -> {orthanc}")


def _npm_reason(stderr: str) -> str:
    """npm's error in one line: its code and first message (``ECONNREFUSED: request to ... failed``)."""
    lines = [line.removeprefix("npm error").strip() for line in stderr.splitlines() if line.startswith("npm error")]
    code = next((line.removeprefix("code ") for line in lines if line.startswith("code ")), "")
    message = next(
        (line for line in lines if line and not line.startswith(("code ", "syscall ", "errno ", "at "))), "no tarball"
    )
    return f"{code}: {message}"[:200] if code else message[:200]
