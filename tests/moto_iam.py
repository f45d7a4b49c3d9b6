"""A loopback S3 server (moto) that enforces IAM policies, for cairn's append-only tests and
benches/sync_s3.sh.

usage: python3 tests/moto_iam.py PORT BUCKET POLICIES_JSON
  POLICIES_JSON maps user names to IAM policy documents.

Starts moto's server in-process on 127.0.0.1:PORT (its access log on stderr) with BUCKET and one
IAM user with an access key per policy, then turns on enforcement (`/moto-api/reset-auth` with
0: from then on every request must be signed by a known key and be allowed by its user's policy),
prints the keys as one JSON line `{"user": [id, secret], ...}` on stdout, and serves until the
process that started it is gone.

One fix to moto (5.x): its server checks a request's signature over the query string as werkzeug
has already decoded it, so every listing with a `/` in its prefix (sent as `%2F`) fails the check,
from boto3 as from cairn. The fix restores the encoding SigV4 signs before the check; the policy
evaluation is moto's own, untouched.
"""

import json
import os
import sys
import time
from urllib.parse import quote, unquote

from moto.iam import access_control

as_received = access_control.IAMRequestBase._create_aws_request


def as_signed(self):
    request = as_received(self)
    path, _, query = request.url.partition("?")
    if query:
        pairs = (pair.partition("=") for pair in query.split("&"))
        encode = lambda text: quote(unquote(text), safe="-_.~")  # noqa: E731
        request.url = path + "?" + "&".join(encode(k) + "=" + encode(v) for k, _, v in pairs)
    return request


access_control.IAMRequestBase._create_aws_request = as_signed

import boto3  # noqa: E402
import requests  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

port, bucket, policies, parent = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), os.getppid()
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=True)
server.start()
endpoint = f"http://127.0.0.1:{port}"
setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **setup).create_bucket(Bucket=bucket)
iam = boto3.client("iam", **setup)
keys = {}
for user, policy in policies.items():
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
requests.post(endpoint + "/moto-api/reset-auth", data=b"0").raise_for_status()
print(json.dumps(keys), flush=True)
while os.getppid() == parent:
    time.sleep(1)
os._exit(0)
