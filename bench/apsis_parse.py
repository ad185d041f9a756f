"""Parse one APSIS export file with the source's parser (ijson -> Arrow batches) and print the row count."""

import sys
from pathlib import Path

from loaders.apsis.export_file import parse_export

rows = sum(batch.num_rows for _, batch in parse_export(Path(sys.argv[1]), "bench"))
print(rows)
