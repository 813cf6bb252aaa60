from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand

from annotate import roles
from annotate.models import Campaign, Task
from annotate.services import campaign_create, campaign_prepare, gold_mark_demo
from catalog.models import Photo
from mlcore.nn.config import EmbedConfig
from mlcore.services import model_version_ensure, products_embed_start

DEMO_PASSWORD = "fitcheck-demo"
DEMO_USERS = (
    # username, role, is_superuser
    ("alice", roles.EMPLOYEE, False),
    ("bob", roles.EMPLOYEE, False),
    ("carol", roles.EMPLOYEE, False),
    ("tara", roles.TAGGER, False),
    ("theo", roles.TAGGER, False),
    ("mila", roles.ML, False),
    ("admin", roles.ADMIN, True),
)
DEMO_INSTRUCTIONS = (
    "Demo data: the catalog holds real Fashion-MNIST product images (Zalando, MIT licence); the customer "
    "photos are generated views of real product images (crop, rotation, lighting, background, occlusion), "
    "some of products that are not in the catalog, and a few photos of no product at all."
)


class Command(BaseCommand):
    help = (
        "Set up the demo: role groups, demo users (printed), the Fashion-MNIST catalog and photos, the "
        "pretrained embedding model, and the 'lunch-verify' match campaign, whose suggestions the Celery "
        "worker then computes. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--products", type=int, default=10_000)
        parser.add_argument("--photos", type=int, default=1_000)
        parser.add_argument("--photos-not-in-catalog", type=int, default=300)
        parser.add_argument("--photos-non-product", type=int, default=24)
        parser.add_argument("--backbone", default=EmbedConfig.backbone)
        parser.add_argument("--image-size", type=int, default=EmbedConfig.image_size_px)
        parser.add_argument(
            "--gold", type=int, default=40, help="Tasks made gold from the demo's ground truth (default 40)."
        )
        parser.add_argument(
            "--tag-products", type=int, default=200, help="Products in the 'catalog-tagging' campaign (default 200)."
        )
        parser.add_argument(
            "--calibration", type=int, default=20, help="Of those, the calibration sample both teams tag (default 20)."
        )

    def handle(self, *args, **options):
        roles.roles_ensure()
        User = get_user_model()
        for username, role, is_superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": is_superuser, "is_superuser": is_superuser}
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
            user.groups.add(Group.objects.get(name=role))
        # The campaign first, so the verify page shows its progress from the start; the products are
        # embedded (queue gpu) while the photos are generated, not after (issue 16: first tasks
        # 208 s after `make demo` started, now the two overlap).
        version = model_version_ensure(
            config=EmbedConfig(backbone=options["backbone"], image_size_px=options["image_size"])
        )
        campaign = campaign_create(
            slug="lunch-verify",
            name="Lunch-break verify",
            model_version=version,
            instructions=DEMO_INSTRUCTIONS,
            created_by=User.objects.get(username="admin"),
        )

        def products_loaded():
            if campaign.status != Campaign.Status.ACTIVE:
                products_embed_start(version=version)

        call_command(
            "load_fashion_mnist",
            products=options["products"],
            photos=options["photos"],
            photos_not_in_catalog=options["photos_not_in_catalog"],
            photos_non_product=options["photos_non_product"],
            products_loaded=products_loaded,
            stdout=self.stdout,
            stderr=self.stderr,
        )
        missing = Photo.objects.count() - Task.objects.filter(campaign=campaign).count()
        if missing > 0 or campaign.status != Campaign.Status.ACTIVE:
            campaign_prepare(campaign=campaign, demo_gold_count=options["gold"])
            self.stdout.write(f"Queued suggestions for {missing} photos with {version.name} (the worker runs them).")
        else:
            marked = gold_mark_demo(campaign=campaign, count=options["gold"])
            self.stdout.write(f"Every photo already has a task; {marked} more marked gold.")
        tagging_campaign = _tagging_campaign(
            products=options["tag_products"],
            calibration=options["calibration"],
            by=User.objects.get(username="admin"),
            embedding_version=version,
        )
        self.stdout.write(
            f"Attribute tagging: campaign '{tagging_campaign.slug}' with "
            f"{Task.objects.filter(campaign=tagging_campaign).count()} products, teams merchandising (tara) and "
            "customer experience (theo)."
        )
        self.stdout.write(f"\nDemo logins (password for all: {DEMO_PASSWORD})")
        for username, role, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<6} {role}")


DEMO_GUIDE = """# Catalog tagging guide

Tag what you **see in the product image**, not what the title says.

- **Category**: the kind of product. If the image shows something else than the title, trust the image.
- **Color**: the main colour, covering most of the product. Two or more colours in equal parts: *multicolour*.
- **Pattern**: *solid* when there is none. A small logo on a plain item is still *solid*; a large print is *logo*.
- **Season** (several allowed): when a shopper would wear it. Leave all unticked if it is worn all year.
- **Personas** (1-5): how strongly the product fits each style. 3 is neutral; use 1 and 5 when you are sure.

When the image is too small, cropped or dark to judge an attribute, choose **can't tell**: it is an answer,
not a failure. Fashion-MNIST images are 28 × 28 grey-scale, so colour is mostly *can't tell* here.
"""


def _tagging_campaign(*, products: int, calibration: int, by, embedding_version=None):
    """The demo's attribute campaign: the default schema over the first `products` catalog products,
    the first `calibration` of them tagged by both teams. The learning loop is on, retraining every
    150 new attribute labels, about 10 products (a small demo campaign; the product default is 500),
    so /learning/ shows runs after a few minutes of tagging. Idempotent."""
    from annotate.models import Team, TeamMember
    from annotate.tagging import tag_tasks_build
    from catalog.attribute_schema import PERSONAS, attribute_schema_ensure
    from catalog.models import Product

    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign, _ = Campaign.objects.get_or_create(
        slug="catalog-tagging",
        defaults={
            "name": "Catalog tagging",
            "kind": Campaign.Kind.ATTRIBUTES,
            "status": Campaign.Status.ACTIVE,
            "guide": DEMO_GUIDE,
            "overlap_min": 2,
            "overlap_max": 3,
            "confidence_target": 0.9,
            "gold_first_count": 0,
            "gold_rate": 0,
            "calibration_answers_per_team": 1,
            "created_by": by,
            "model_version": embedding_version,
            "learning_enabled": embedding_version is not None,
            "retrain_every_labels": 150,
        },
    )
    wanted = ["category", "color", "pattern", "sleeve_length", "neckline", "pant_length", "season"]
    campaign.attributes.set([schema[s] for s in wanted] + [schema[f"persona_{p}"] for p in PERSONAS])
    User = get_user_model()
    teams = []
    for slug, name, username in (
        ("merchandising", "Merchandising", "tara"),
        ("customer-experience", "Customer experience", "theo"),
    ):
        team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": name})
        TeamMember.objects.get_or_create(user=User.objects.get(username=username), defaults={"team": team})
        teams.append(team)
    campaign.calibration_teams.set(teams)
    chosen = list(Product.objects.filter(master_category__isnull=False).order_by("pk")[:products])
    tag_tasks_build(campaign=campaign, products=chosen[:calibration], calibration=True)
    tag_tasks_build(campaign=campaign, products=chosen[calibration:])
    return campaign
