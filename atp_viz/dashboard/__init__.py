"""The Streamlit dashboard's plumbing: session state, server workbenches and jobs, widgets, figures."""
