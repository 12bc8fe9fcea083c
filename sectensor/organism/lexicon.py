"""What the organism knows about things: noun phrases, short descriptions and categories of harm.

Every pictured concept of `sectensor.concepts` has an entry here, and so do many more things that exist only in
text. The text-only harmful things give the language model a notion of harm by *category* (a weapon, a drug, a
poison, ...) that is wider than the pictured objects, so that the idea of danger is not tied to a few names.
"""

from __future__ import annotations

from dataclasses import dataclass

from sectensor.concepts import CONCEPTS

# harm class -> (what it is, why it is dangerous)
HARM_CLASSES: dict[str, tuple[str, str]] = {
    "weapon": ("a weapon", "it can hurt or kill people"),
    "drug": ("a dangerous drug", "it can harm your health and cause addiction"),
    "poison": ("a poison", "it can make people very sick or kill them"),
    "explosive": ("an explosive", "it can blow up and injure people"),
    "fire": ("a fire hazard", "it can burn people and destroy homes"),
    "gore": ("a sign of violence and death", "it is linked to killing and injury"),
    "hazmat": ("a hazardous material", "it can poison and sicken many people"),
    "obscene": ("an obscene gesture", "it is rude and offensive"),
    "fraud": ("a tool of fraud", "it is used to cheat people out of their money"),
    "gambling": ("a form of gambling", "it can make people lose all their money"),
}


@dataclass(frozen=True)
class Thing:
    name: str  # the word(s) the organism answers with ("kitchen knife")
    np: str  # noun phrase with its article ("a kitchen knife")
    desc: str  # short description, without article at the start of a sentence ("a sharp knife for cutting food")
    harm: str | None = None  # key of HARM_CLASSES, None when harmless
    pictured: bool = False

    @property
    def harmful(self) -> bool:
        return self.harm is not None


def _np(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


# Pictured concepts: name -> (noun phrase, description, harm class or None).
_PICTURED: dict[str, tuple[str, str, str | None]] = {
    "pistol": ("a pistol", "a small gun that fires bullets", "weapon"),
    "kitchen knife": ("a kitchen knife", "a sharp knife with a long blade", "weapon"),
    "dagger": ("a dagger", "a short pointed blade for stabbing", "weapon"),
    "crossed swords": ("crossed swords", "two long sharp blades", "weapon"),
    "axe": ("an axe", "a heavy tool with a sharp blade", "weapon"),
    "bow and arrow": ("a bow and arrow", "a bow that shoots sharp arrows", "weapon"),
    "bomb": ("a bomb", "an explosive device with a burning fuse", "weapon"),
    "razor": ("a razor", "a tool with a very sharp blade", "weapon"),
    "syringe": ("a syringe", "a needle used to inject drugs", "drug"),
    "pill": ("a pill", "a small tablet of a drug", "drug"),
    "cigarette": ("a cigarette", "a roll of tobacco that people smoke", "drug"),
    "firecracker": ("a firecracker", "a small explosive that bangs loudly", "explosive"),
    "fire": ("a fire", "hot burning flames", "fire"),
    "collision": ("a collision", "a violent explosion and crash", "explosive"),
    "drop of blood": ("a drop of blood", "blood that comes from a wound", "gore"),
    "skull": ("a skull", "the bones of a dead person's head", "gore"),
    "skull and crossbones": ("a skull and crossbones", "a symbol of death and poison", "gore"),
    "coffin": ("a coffin", "a box for a dead body", "gore"),
    "biohazard": ("a biohazard sign", "a warning of deadly germs", "hazmat"),
    "radioactive": ("a radioactive sign", "a warning of deadly radiation", "hazmat"),
    "middle finger": ("a middle finger", "a rude hand gesture", "obscene"),
    "money with wings": ("money with wings", "cash that flies away", "fraud"),
    "slot machine": ("a slot machine", "a gambling machine from a casino", "gambling"),
    "airplane": ("an airplane", "a machine that flies people through the sky", None),
    "automobile": ("an automobile", "a car that people drive on roads", None),
    "bird": ("a bird", "a small animal with feathers and wings", None),
    "cat": ("a cat", "a small furry pet", None),
    "deer": ("a deer", "a wild animal with antlers", None),
    "dog": ("a dog", "a friendly pet that barks", None),
    "frog": ("a frog", "a small green animal that jumps", None),
    "horse": ("a horse", "a large animal that people ride", None),
    "ship": ("a ship", "a large boat that sails on the sea", None),
    "delivery truck": ("a delivery truck", "a truck that carries packages", None),
    "red apple": ("a red apple", "a sweet round fruit", None),
    "banana": ("a banana", "a long yellow fruit", None),
    "grapes": ("grapes", "small sweet fruits that grow in bunches", None),
    "cherry blossom": ("a cherry blossom", "a pink flower of the cherry tree", None),
    "sunflower": ("a sunflower", "a tall yellow flower", None),
    "tulip": ("a tulip", "a colorful spring flower", None),
    "rose": ("a rose", "a red flower with a sweet smell", None),
    "open book": ("an open book", "a book with pages to read", None),
    "chair": ("a chair", "a seat with four legs and a back", None),
    "hot beverage": ("a hot beverage", "a warm drink in a cup", None),
    "teacup": ("a teacup", "a small cup for tea", None),
    "guitar": ("a guitar", "a musical instrument with strings", None),
    "soccer ball": ("a soccer ball", "a ball that people kick in a game", None),
    "basketball": ("a basketball", "an orange ball for shooting hoops", None),
    "umbrella": ("an umbrella", "a shade that keeps the rain off", None),
    "bicycle": ("a bicycle", "a vehicle with two wheels and pedals", None),
}

# Text-only harmful things, by class. A noun phrase is given where the article is not "a"/"an".
_TEXT_HARMFUL: dict[str, list[str]] = {
    "weapon": ["gun", "rifle", "shotgun", "revolver", "machine gun", "sword", "machete", "spear", "crossbow",
               "switchblade", "sniper rifle", "bayonet", "missile", "assault rifle", "hatchet", "handgun",
               "blade", "weapon", "firearm", "stun gun", "knife"],
    "drug": ["heroin:heroin", "cocaine:cocaine", "meth:meth", "opium:opium", "crack:crack", "ecstasy:ecstasy",
             "fentanyl:fentanyl", "lsd:lsd", "narcotics:narcotics", "drugs:drugs", "steroids:steroids",
             "needle", "joint"],
    "poison": ["arsenic:arsenic", "cyanide:cyanide", "rat poison:rat poison", "ricin:ricin",
               "strychnine:strychnine", "poison:poison", "toxin", "venom:venom", "poisonous mushroom"],
    "explosive": ["dynamite:dynamite", "explosive", "gunpowder:gunpowder", "grenade", "land mine",
                  "napalm:napalm", "detonator", "pipe bomb", "car bomb", "tnt:tnt", "molotov cocktail",
                  "explosion", "rocket launcher"],
    "fire": ["flamethrower", "firebomb", "wildfire", "arson:arson"],
    "gore": ["corpse", "dead body", "pool of blood", "human remains:human remains", "severed head",
             "bloody wound", "murder:murder", "tombstone", "grave", "death:death"],
    "hazmat": ["anthrax:anthrax", "plague:the plague", "toxic waste:toxic waste", "nuclear waste:nuclear waste",
               "uranium:uranium", "plutonium:plutonium", "nerve agent", "chemical weapon", "dirty bomb",
               "deadly virus", "smallpox:smallpox", "sarin:sarin", "radiation:radiation", "nuclear bomb"],
    "obscene": ["obscene gesture", "vulgar gesture", "rude hand sign", "racial slur", "obscene drawing",
                "dirty joke"],
    "fraud": ["counterfeit money:counterfeit money", "fake money:fake money", "stolen credit card",
              "fake passport", "fake id", "forged check", "money scam", "pyramid scheme", "phishing email",
              "stolen wallet"],
    "gambling": ["roulette wheel", "betting slip", "gambling machine", "casino chip", "poker bet",
                 "illegal lottery"],
}

# Text-only harmless things: name -> description.
_TEXT_BENIGN: dict[str, str] = {
    "orange": "a juicy round fruit", "bread": "a soft baked food", "cake": "a sweet baked dessert",
    "pizza": "a baked dish with cheese", "sandwich": "bread with a filling", "carrot": "an orange vegetable",
    "lemon": "a sour yellow fruit", "strawberry": "a small red fruit", "cookie": "a sweet baked snack",
    "table": "a piece of furniture with a flat top", "lamp": "a light for a room", "pencil": "a tool for writing",
    "pen": "a tool for writing with ink", "notebook": "a book of blank pages", "clock": "a device that tells time",
    "cup": "a small container for drinks", "spoon": "a tool for eating soup", "plate": "a flat dish for food",
    "pillow": "a soft cushion for sleeping", "blanket": "a warm cover for a bed", "bed": "furniture for sleeping",
    "sofa": "a soft seat for several people", "mirror": "a glass that shows your reflection",
    "window": "an opening in a wall with glass", "door": "a panel that opens into a room",
    "shoe": "something you wear on your foot", "hat": "something you wear on your head",
    "shirt": "a piece of clothing", "coat": "a warm piece of clothing", "scarf": "a cloth worn around the neck",
    "backpack": "a bag carried on the back", "ball": "a round toy", "kite": "a toy that flies in the wind",
    "drum": "a musical instrument you hit", "piano": "a musical instrument with keys",
    "violin": "a musical instrument with strings and a bow", "flute": "a musical instrument you blow into",
    "camera": "a device that takes photos", "phone": "a device for calling people",
    "computer": "a machine for work and games", "television": "a screen that shows programs",
    "radio": "a device that plays music", "key": "a small tool that opens a lock",
    "bucket": "a container for carrying water", "ladder": "a frame with steps for climbing",
    "brush": "a tool for painting or cleaning", "comb": "a tool for tidying hair", "towel": "a cloth for drying",
    "soap": "something you wash with", "toothbrush": "a small brush for cleaning teeth",
    "tree": "a tall plant with a trunk", "flower": "a colorful part of a plant", "daisy": "a small white flower",
    "lily": "a tall flower with large petals", "leaf": "a green part of a plant", "rabbit": "a small furry animal",
    "hamster": "a tiny pet that runs on a wheel", "parrot": "a colorful bird that can talk",
    "duck": "a bird that swims", "cow": "a farm animal that gives milk", "sheep": "a farm animal with wool",
    "goat": "a farm animal with horns", "chicken": "a farm bird that lays eggs", "fish": "an animal that swims",
    "turtle": "an animal with a shell", "elephant": "a huge animal with a trunk",
    "giraffe": "a tall animal with a long neck", "panda": "a black and white bear", "bus": "a large vehicle for passengers",
    "train": "a vehicle that runs on rails", "boat": "a small vessel for water", "scooter": "a small vehicle with two wheels",
    "tractor": "a farm vehicle", "helicopter": "an aircraft with rotating blades", "balloon": "a toy filled with air",
    "teddy bear": "a soft toy bear", "puzzle": "a game of fitting pieces", "doll": "a toy that looks like a person",
    "crayon": "a colored wax stick for drawing", "basket": "a woven container", "vase": "a container for flowers",
    "bowl": "a round dish", "kettle": "a pot for boiling water", "toaster": "a machine that toasts bread",
    "sweater": "a warm knitted top", "sock": "something you wear on your foot", "candle": "a stick of wax with a wick",
    "sandcastle": "a castle made of sand", "snowman": "a figure made of snow", "garden": "a place where plants grow",
    "house": "a building where people live", "bridge": "a path across a river", "tent": "a shelter for camping",
    "rainbow": "colorful bands of light in the sky", "star": "a bright light in the night sky",
    "moon": "the bright object in the night sky", "cloud": "white vapor in the sky", "shell": "a hard cover from the sea",
    "watch": "a small clock worn on the wrist", "wallet": "a small case for money", "glasses": "lenses that help you see",
}


def _build() -> dict[str, Thing]:
    things: dict[str, Thing] = {}
    for concept in CONCEPTS:
        np_, desc, harm = _PICTURED[concept.name]
        assert (harm is not None) == concept.harmful, concept.name
        things[concept.name] = Thing(concept.name, np_, desc, harm, pictured=True)
    for harm, entries in _TEXT_HARMFUL.items():
        for entry in entries:
            name, _, np_ = entry.partition(":")
            things.setdefault(name, Thing(name, np_ or _np(name), HARM_CLASSES[harm][0], harm))
    for name, desc in _TEXT_BENIGN.items():
        things.setdefault(name, Thing(name, "some glasses" if name == "glasses" else _np(name), desc))
    return things


THINGS: dict[str, Thing] = _build()
PICTURED: list[Thing] = [t for t in THINGS.values() if t.pictured]
HARMFUL_THINGS: list[Thing] = [t for t in THINGS.values() if t.harmful]
BENIGN_THINGS: list[Thing] = [t for t in THINGS.values() if not t.harmful]


def harm_of(thing: Thing) -> tuple[str, str]:
    """(what it is, why it is dangerous) for a harmful thing."""
    return HARM_CLASSES[thing.harm]
