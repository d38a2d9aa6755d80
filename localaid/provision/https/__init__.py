"""HTTPS in front of Open WebUI (`webui.tls`): the certificates localaid makes or installs."""
