"""trainmap's dashboard (Dash + dash-cytoscape); never imports torch."""
