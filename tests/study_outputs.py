"""What a study reports, as bytes, for tests that check exploring never changes it."""
from pathlib import Path


def study_outputs(folder: Path) -> dict[str, bytes]:
    """REPORT.md without its time stamp, and every table and PNG figure the report shows."""
    report = "\n".join(line for line in (folder / "REPORT.md").read_text().splitlines() if "Generated " not in line)
    files = {str(p.relative_to(folder)): p.read_bytes() for sub in ("tables", "figures") for p in (folder / sub).glob("*")
             if p.suffix != ".pdf"}   # a PDF stamps its creation time
    return {"REPORT.md": report.encode(), **files}
