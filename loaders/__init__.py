"""asapp-elt: ASAPP and APSIS data into the warehouse (dlt + dbt), curated metadata back to ASAPP."""

import warnings

# dagster-dbt (the orchestration extra) installs sqlglot[rs], which sqlglot 29 warns about on import (dlt imports
# sqlglot): a line on every command that no user can act on. Set here, before any of our modules imports dlt, so
# that `elt` and `python -m loaders.<pipeline>` are both spared it.
warnings.filterwarnings("ignore", message=r"sqlglot\[rs\] is deprecated", category=UserWarning)
