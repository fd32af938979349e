"""A closed, hand-curated list of gendered English words (written for this repo, not copied).

Source note: no clean offline gendered word list ships in the installed pip packages (the project's
package lists hold only name-guessing services that call web APIs), so this list was written by hand
from common English kinship terms, titles, occupational pairs, animal pairs, pronouns and frequent
given names. Each entry is a male/female counterpart pair, so the two classes match in frequency
band and topic. Nouns carry their determiner so every template reads naturally. Pairs whose last
token would be shared (in-law, lady of the house, Mr./Mrs. Smith) or ambiguous (duck) are left out:
the activation is read at the word's last token.
"""

PAIRS = [
    # pronouns (object / reflexive forms fit every template)
    ("him", "her"), ("himself", "herself"),
    # kinship
    ("my father", "my mother"), ("my dad", "my mom"), ("my son", "my daughter"), ("my brother", "my sister"),
    ("my uncle", "my aunt"), ("my nephew", "my niece"), ("my grandfather", "my grandmother"),
    ("my grandson", "my granddaughter"), ("my husband", "my wife"), ("my boyfriend", "my girlfriend"),
    ("my stepfather", "my stepmother"), ("my stepson", "my stepdaughter"),
    ("my godfather", "my godmother"), ("the widower", "the widow"), ("the groom", "the bride"),
    # general nouns
    ("the man", "the woman"), ("the boy", "the girl"), ("the gentleman", "the lady"), ("the guy", "the gal"),
    ("the lad", "the lass"), ("the men", "the women"), ("the boys", "the girls"), ("the male", "the female"),
    # titles and roles
    ("the king", "the queen"), ("the prince", "the princess"), ("the duke", "the duchess"), ("the emperor", "the empress"),
    ("the baron", "the baroness"), ("the count", "the countess"),
    ("the monk", "the nun"), ("the priest", "the priestess"), ("the god", "the goddess"), ("the hero", "the heroine"),
    ("the actor", "the actress"), ("the waiter", "the waitress"), ("the host", "the hostess"),
    ("the steward", "the stewardess"), ("the headmaster", "the headmistress"), ("the landlord", "the landlady"),
    ("the businessman", "the businesswoman"), ("the chairman", "the chairwoman"), ("the policeman", "the policewoman"),
    ("the salesman", "the saleswoman"), ("the sportsman", "the sportswoman"), ("the schoolboy", "the schoolgirl"),
    ("the fraternity", "the sorority"), ("the wizard", "the witch"), ("the bachelor", "the spinster"),
    ("the patriarch", "the matriarch"),
    # animals
    ("the bull", "the cow"), ("the rooster", "the hen"), ("the stallion", "the mare"), ("the ram", "the ewe"),
    ("the buck", "the doe"), ("the boar", "the sow"), ("the gander", "the goose"),
    # given names (frequent, unambiguous)
    ("John", "Mary"), ("James", "Elizabeth"), ("Robert", "Jennifer"), ("Michael", "Linda"), ("William", "Patricia"),
    ("David", "Susan"), ("Richard", "Jessica"), ("Joseph", "Sarah"), ("Thomas", "Karen"), ("Charles", "Nancy"),
    ("Daniel", "Lisa"), ("Matthew", "Margaret"), ("George", "Emily"), ("Peter", "Anna"), ("Paul", "Laura"),
    ("Mark", "Emma"), ("Steven", "Olivia"), ("Edward", "Sophia"), ("Henry", "Alice"), ("Jack", "Rachel"),
    ("Kevin", "Rebecca"), ("Brian", "Julia"), ("Frank", "Helen"), ("Harry", "Grace"), ("Albert", "Catherine"),
]
MALE = [m for m, _ in PAIRS]
FEMALE = [f for _, f in PAIRS]

# Every template ends with the word, so the last token's activation is read in context.
TEMPLATES = [
    "Yesterday I went for a long walk with {w}",
    "The newspaper story was mostly about {w}",
    "Everyone at the station was waiting for {w}",
    "We had a quiet dinner last night with {w}",
    "The old photograph on the wall shows {w}",
    "The letter on the table was written by {w}",
    "After the meeting, the manager thanked {w}",
    "Nobody in the village had ever met {w}",
]
