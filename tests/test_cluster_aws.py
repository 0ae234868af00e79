"""ray_cluster.yaml against AWS as emulated by moto on loopback: the account the deploy
guide's steps make (docs/cluster.md: instance profiles from cluster/aws/, the security
group from its CloudFormation template in the default VPC, the Ray token in SSM, an AMI),
then what `ray up` does first: Ray's own AWS bootstrap, and the head's set-up command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .test_cluster_configs import world_open_violations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AWS = os.path.join(ROOT, "cluster", "aws")
TOKEN = "0123456789abcdef" * 2


@pytest.fixture
def account(s3_server, tmp_path, monkeypatch):
    """What the deploy guide's steps 5-8 create, in moto; returns (ray_cluster config with
    the placeholders filled, boto3 session factory)."""
    import boto3

    monkeypatch.setenv("HOME", str(tmp_path))  # the launcher writes its SSH key under ~/.ssh
    config_text = open(os.path.join(ROOT, "ray_cluster.yaml")).read()
    region = yaml.safe_load(config_text)["provider"]["region"]
    ec2 = boto3.client("ec2", region_name=region)
    iam = boto3.client("iam", region_name=region)
    fill = {"CHANGE_ACCOUNT": "123456789012", "CHANGE_REGION": region, "CHANGE_BUCKET": "test-bucket"}

    def filled(name):
        text = open(os.path.join(AWS, name)).read()
        for k, v in fill.items():
            text = text.replace(k, v)
        return text

    for who in ("head", "worker"):
        name = f"samadapter-ray-{who}"
        if name not in {r["RoleName"] for r in iam.list_roles()["Roles"]}:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=filled("trust-ec2.json"))
            iam.put_role_policy(RoleName=name, PolicyName="samadapter", PolicyDocument=filled(f"{who}-policy.json"))
            iam.create_instance_profile(InstanceProfileName=name)
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    vpc = next(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v["IsDefault"])
    cfn = boto3.client("cloudformation", region_name=region)
    stack = f"samadapter-ray-sg-{os.getpid()}-{len(cfn.list_stacks()['StackSummaries'])}"
    cfn.create_stack(StackName=stack, TemplateBody=open(os.path.join(AWS, "security-group.cfn.yaml")).read(),
                     Parameters=[{"ParameterKey": "VpcId", "ParameterValue": vpc},
                                 {"ParameterKey": "SshCidr", "ParameterValue": "198.51.100.0/24"}])
    outputs = cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    sg = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "SecurityGroupId")
    boto3.client("ssm", region_name=region).put_parameter(Name="/samadapter/ray-auth-token", Value=TOKEN,
                                                          Type="SecureString", Overwrite=True)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    config_text = config_text.replace("ami-CHANGE_AMI", ami).replace("sg-CHANGE_SECURITY_GROUP", sg)
    return yaml.safe_load(config_text), region, sg


def test_rays_aws_bootstrap_passes_and_opens_nothing_to_the_world(account):
    import boto3
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    config, region, sg = account
    ec2 = boto3.client("ec2", region_name=region)
    before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    boot = bootstrap_aws(prepare_config(config))
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert {g["GroupId"] for g in groups} == before, "ray up created a security group of its own"
    for group in groups:
        assert world_open_violations(group["IpPermissions"]) == [], group["GroupName"]
    ours = next(g for g in groups if g["GroupId"] == sg)
    ssh = [p for p in ours["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for p in ssh for r in p["IpRanges"]] == ["198.51.100.0/24"]
    for name, node in boot["available_node_types"].items():
        nc = node["node_config"]
        assert nc["SecurityGroupIds"] == [sg] and nc["SubnetIds"], name
        expected = "samadapter-ray-head" if name == config["head_node_type"] else "samadapter-ray-worker"
        assert nc["IamInstanceProfile"] == {"Name": expected}


def _token_command(config):
    (command,) = [c for c in config["setup_commands"] if "auth_token" in c]
    return command


def _container_env(config):
    """The environment `docker run` gives the container: its -e options."""
    return dict(o.split(None, 1)[1].split("=", 1) for o in config["docker"]["run_options"] if o.startswith("-e "))


def _run_on_a_node(command, env, home):
    """A shell with only ``env``, plus what an instance profile provides (credentials; here
    moto's, and its endpoint) and PATH."""
    base = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "HOME": str(home),
            "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run(["bash", "-c", command], env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_the_heads_token_command_runs_with_only_the_containers_environment(account, tmp_path):
    config, region, _ = account
    env = _container_env(config)
    r = _run_on_a_node(_token_command(config), env, tmp_path / "node")
    assert r.returncode == 0, r.stderr[-2000:]
    token = tmp_path / "node" / ".ray" / "auth_token"
    assert token.read_text() == TOKEN and oct(token.stat().st_mode & 0o777) == "0o600"
    # what failed before: AWS_REGION alone, which botocore does not read
    r = _run_on_a_node(_token_command(config), {"AWS_REGION": region}, tmp_path / "other")
    assert r.returncode != 0 and "NoRegionError" in r.stderr


def test_the_policies_are_valid_iam_documents(account):
    """moto parses each policy as IAM does when the deploy guide puts it on a role."""
    import boto3

    _, region, _ = account
    iam = boto3.client("iam", region_name=region)
    for who in ("head", "worker"):
        doc = iam.get_role_policy(RoleName=f"samadapter-ray-{who}", PolicyName="samadapter")["PolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        assert doc["Statement"] and all(s["Effect"] == "Allow" for s in doc["Statement"])
