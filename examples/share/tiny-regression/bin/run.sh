#!/bin/sh
# Started by droprun in the run folder on the training host, with the request's args.
exec python3 train.py --output output "$@"
