"""Local sandbox: a generated ASAPP export tree behind a local SFTP server, for the demo and the tests."""
