"""asapp-elt: ASAPP and APSIS data into the warehouse (dlt + dbt), curated metadata back to ASAPP."""
