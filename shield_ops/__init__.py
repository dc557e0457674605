"""shield-ops: EC2 spot clusters provisioned, deployed and started; a live terminal UI."""
