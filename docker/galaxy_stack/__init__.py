"""What the stack adds to Galaxy's own Python code, used only where the stack names it:
runners.py in config/job_conf.yml, web.py by the web role (docker/entrypoint.py)."""
