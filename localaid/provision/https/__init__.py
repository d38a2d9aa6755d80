"""HTTPS in front of Open WebUI (`webui.tls`): the certificates localaid makes or installs
(certs), nginx's configuration (nginx), localaid-https.service and its set-up (service), the
`localaid https` commands (commands) and doctor's checks (doctor)."""
