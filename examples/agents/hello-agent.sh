#!/bin/sh
# The sample agent of the README demo. Later it calls tools through outpost; for now it is the
# binary whose measurement the agent's TPM key certification binds.
echo "hello from an agent"
