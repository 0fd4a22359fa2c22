"""Clinician review in OHIF: the viewer's configuration, the nginx front door and the link to a case.

OHIF (``@ohif/app`` on npm) ships a built single-page viewer (``dist/``) whose ``app-config.js``
points at a public demo server. Served at ``/`` of one origin, with ``/dicom-web/`` proxied to the
PACS (Orthanc or any DICOMweb server) by nginx, it needs no CORS (which Orthanc does not answer).
Pure text builders only: the CLI (``deconvseg viewer``) fetches, unpacks and writes the files.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode, urlsplit

from deconvseg.pipeline.errors import InputError

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"  # pinned: the URL parameters and config keys below were checked against it
INVESTIGATIONAL_USE_DAYS = 365  # the "investigational use" banner is shown once, then once a year

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def app_config_js(dicomweb_root: str = "/dicom-web", *, name: str = "deconvseg") -> str:
    """OHIF's ``app-config.js`` for one DICOMweb server on the viewer's own origin.

    QIDO, WADO-RS and WADO-URI all go to ``dicomweb_root`` (a path on the same origin, proxied to
    the PACS), so no external server remains. The first-visit tour is off, SEG/RTSTRUCT are shown
    without a "load this segmentation?" prompt, and the investigational-use banner is stated once.

    Args:
        dicomweb_root: absolute path of the DICOMweb root on the viewer's origin (``/dicom-web``).
        name: the data source's friendly name shown in OHIF.

    Returns:
        The JavaScript text of ``app-config.js``.

    Raises:
        InputError: the root is not an absolute path (``/...``) without a host.
    """
    root = _root_path(dicomweb_root)
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": name,
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "name": "deconvseg",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "disableConfirmationPrompts": True,
        "measurementTrackingMode": "simplified",
        "investigationalUseDialog": {"option": "configure", "days": INVESTIGATIONAL_USE_DAYS},
        "customizationService": {"global": {"ohif.tours": {"$set": []}}},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    header = (
        f"/* Written by deconvseg for {OHIF_PACKAGE} {OHIF_VERSION}: one DICOMweb server at {root} "
        "on this origin (nginx proxies it to the PACS). */\n"
    )
    return header + "window.config = " + json.dumps(config, indent=2) + ";\n"


def nginx_server_block(
    orthanc_url: str,
    listen: str,
    viewer_dir: str,
    *,
    dicomweb_root: str = "/dicom-web",
    upstream_authorization: str | None = None,
    htpasswd: str | None = None,
    tls: tuple[str, str] | None = None,
) -> str:
    """An nginx ``server`` block: OHIF at ``/``, ``dicomweb_root`` proxied to the PACS's DICOMweb root.

    Authentication: by default the browser's ``Authorization`` header is passed through to the PACS
    (Orthanc's own users; the browser asks for them). With ``htpasswd`` nginx checks the users itself,
    and with ``upstream_authorization`` it sends its own credentials to the PACS (the browser then
    never sees them). With ``tls`` nginx terminates TLS on ``listen`` (docs/review.md).

    Args:
        orthanc_url: the PACS's DICOMweb root as nginx reaches it (``http://127.0.0.1:8042/dicom-web``).
        listen: ``HOST:PORT`` nginx listens on.
        viewer_dir: the folder holding OHIF's ``index.html`` and ``app-config.js``.
        dicomweb_root: the path OHIF's ``app-config.js`` uses for DICOMweb.
        upstream_authorization: ``Authorization`` header value nginx sends to the PACS, or ``None``.
        htpasswd: an htpasswd file for nginx's own basic authentication, or ``None``.
        tls: ``(certificate, key)`` files (PEM) to serve HTTPS on ``listen``, or ``None`` for HTTP.

    Returns:
        The server block text (for ``/etc/nginx/conf.d/`` or an ``include`` inside ``http {}``).

    Raises:
        InputError: a malformed URL, listen address or path.
    """
    upstream = urlsplit(orthanc_url)
    if upstream.scheme not in ("http", "https") or not upstream.netloc or upstream.query or upstream.fragment:
        raise InputError(
            orthanc_url,
            "not an http(s) URL of a DICOMweb root",
            "pass --orthanc http://HOST:PORT/dicom-web (the PACS's DICOMweb root)",
        )
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(listen, "not a HOST:PORT listen address", "pass --listen 127.0.0.1:8080")
    for value in (viewer_dir, htpasswd or "", upstream_authorization or "", *(tls or ())):
        if any(c in value for c in '";{}\n\r'):
            raise InputError(value, "holds a character nginx would read as syntax", "use a plain path or value")
    root = _root_path(dicomweb_root)
    listen_line = f"listen {listen};"
    if tls:
        listen_line = (
            f'listen {listen} ssl;\n    ssl_certificate "{tls[0]}";\n    ssl_certificate_key "{tls[1]}";\n'
            "    ssl_protocols TLSv1.2 TLSv1.3;"
        )
    client_auth = f'    auth_basic "deconvseg review";\n    auth_basic_user_file "{htpasswd}";\n' if htpasswd else ""
    if upstream_authorization:
        upstream_auth = f'        proxy_set_header Authorization "{upstream_authorization}";\n'
    elif htpasswd:  # the browser's credentials were for nginx; the PACS must not see them
        upstream_auth = '        proxy_set_header Authorization "";\n'
    else:  # passed through: the PACS checks the browser's own credentials
        upstream_auth = ""
    return f"""# deconvseg review: OHIF {OHIF_VERSION} at /, {root}/ proxied to the PACS (deconvseg viewer nginx-config)
server {{
    {listen_line}
    root "{viewer_dir}";
    index index.html;
    client_max_body_size 500m;
{client_auth}    # One origin, isolated: OHIF may then use SharedArrayBuffer for volume rendering.
    add_header Cross-Origin-Opener-Policy same-origin always;
    add_header Cross-Origin-Embedder-Policy require-corp always;
    add_header Cross-Origin-Resource-Policy same-origin always;

    location / {{
        try_files $uri $uri/ /index.html;  # the viewer routes (/viewer, /segmentation) are the SPA's
    }}
    location = /app-config.js {{
        add_header Cache-Control "no-cache" always;
        add_header Cross-Origin-Opener-Policy same-origin always;
        add_header Cross-Origin-Embedder-Policy require-corp always;
        add_header Cross-Origin-Resource-Policy same-origin always;
    }}
    location {root}/ {{
{upstream_auth}        proxy_pass {orthanc_url.rstrip("/")}/;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Forwarded "host=$http_host;proto=$scheme";
        proxy_buffering off;
        proxy_read_timeout 300s;
    }}
}}
"""


def viewer_url(base: str, study_uid: str, seg_series_uid: str | None = None) -> str:
    """The OHIF link that opens ``study_uid`` with our segmentation shown.

    ``initialSeriesInstanceUID`` puts the SEG's display set in the first viewport; OHIF then lays
    the segmentation over the image series it references (no prompt with our ``app-config.js``).

    Args:
        base: where OHIF is served (``https://review.hospital.org``), with or without a trailing ``/``.
        study_uid: the StudyInstanceUID of the case.
        seg_series_uid: the SeriesInstanceUID of our DICOM-SEG, or ``None`` for the images only.

    Returns:
        ``<base>/viewer?StudyInstanceUIDs=<study>[&initialSeriesInstanceUID=<seg>]``.

    Raises:
        InputError: ``base`` is not an http(s) URL or a UID is malformed.
    """
    params = {"StudyInstanceUIDs": _uid(study_uid)}
    if seg_series_uid is not None:
        params["initialSeriesInstanceUID"] = _uid(seg_series_uid)
    return f"{check_viewer_base(base)}/viewer?{urlencode(params)}"


def check_viewer_base(base: str) -> str:
    """``base`` without its trailing ``/`` when it is an http(s) URL without query or fragment.

    Raises:
        InputError: anything else (checked before a case is segmented, not after).
    """
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InputError(base, "not an http(s) base URL of the viewer", "pass --viewer-url https://HOST[:PORT][/PATH]")
    return base.rstrip("/")


def _uid(value: str) -> str:
    if not _UID.match(value) or len(value) > 64:
        raise InputError(value, "not a DICOM UID", "pass the StudyInstanceUID/SeriesInstanceUID as digits and dots")
    return value


def _root_path(root: str) -> str:
    if not root.startswith("/") or "//" in root or any(c in root for c in ' ";{}?#\n'):
        raise InputError(root, "not an absolute path on the viewer's origin", "pass --dicomweb-root /dicom-web")
    return root.rstrip("/") or "/"
