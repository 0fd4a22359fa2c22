"""PACS in, PACS out over DICOMweb: query (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS).

``connection`` opens a client with credentials passed in as values (never read here, never
logged), ``query`` finds series, ``transfer`` moves instances, ``naming`` names cases and our
derived series, ``state`` remembers each source's last successful run.
"""
